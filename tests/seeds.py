"""The five seed workflows (our first users' projects): each is one spec in `examples/`, in two forms.

The real form is the file as it is: the real base model id, sized for H100/A100, run on a cluster.
`tests/unit/test_seeds_real.py` puts it through `launch plan` and `launch submit --dry-run`.

The tiny stand-in is the same file with the `--set` overrides below: a randomly initialised model of
the same architecture with the family's real tokenizer and chat template (`tests/models.py`), the
example data shipped in `examples/data/seedNNN/`, CPU, a local MLflow store and output folder.
`tests/e2e/test_seeds.py` runs it through `launch submit --local`: training, export, verification,
registration. The docs page of each seed (docs/seeds/) shows the same overrides.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tests.models import Arch

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

# A random-weights gpt-oss has nearly flat next-token distributions, full of near-ties: 4-bit quantization flips
# many top-1 choices (83% agreement measured) while the distributions stay close (KL 0.003). Its stand-ins hold
# q4_k_m to a tighter KL and a looser top-1 than the defaults, which are set for trained models.
RANDOM_Q4 = "export.verify.thresholds={q4_k_m: {min_top1: 0.75, max_kl: 0.05}}"
# Seed 000 exports LoRA GGUFs over a shared base: the adapter gate first measures the q4_k_m base alone against the HF
# base (its floor), and the untrained random base is flatter still than a trained merge: 57.9% top-1 at KL 0.0037
# measured. Its stand-in takes top-1 down to 50% and holds KL to 0.02, the measure that stays meaningful here. Even
# q8_0 flips up to 8% of that base's near-ties (92.2% and 93.8% top-1 on two template dates, 95% or more on a third;
# KL at most 0.0005): q8_0 is held to 85% top-1 and a KL of 0.005, four times tighter than the default.
RANDOM_Q4_BASE = "export.verify.thresholds={q4_k_m: {min_top1: 0.5, max_kl: 0.02}, q8_0: {min_top1: 0.85, max_kl: 0.005}}"
# gpt-oss's chat template writes the date into every prompt (`Current date:`), and `launch submit` records the day of
# submission: pinned, a gpt-oss stand-in renders the same text on every day it runs, as a test must.
DATED = "data.template_date=2025-08-05"

# Every stand-in: CPU, one process, float32 (fastest on CPU), no cluster services.
CPU = ("resources.gpu=none", "resources.nodes=1", "model.dtype=float32", "training.strategy=ddp",
       "training.gradient_checkpointing=false", "output.uri=null", "tracking.mlflow_uri=null")


@dataclass(frozen=True)
class Seed:
    example: str  # file in examples/
    arch: Arch  # the stand-in's architecture (tests/models.py)
    standin: tuple[str, ...]  # overrides (after CPU) that make the real form the CPU stand-in
    values: str | None = None  # chart values file (examples/) the real form is submitted with
    variants: tuple[tuple[str, ...], ...] = ()  # overrides of other real forms the docs name (other bases)
    data: tuple[str, ...] = field(default=())  # folders under examples/data/ the stand-in reads

    @property
    def path(self) -> Path:
        return EXAMPLES / self.example

    @property
    def id(self) -> str:
        return self.example.split("-", 1)[0]

    def overrides(self, base_model: Path) -> list[str]:
        return [*CPU, f"base_model={base_model}", *self.standin]

    def copy_to(self, dest: Path) -> Path:
        """The spec and its example data in `dest` (laid out as in examples/), so runs write there."""
        dest.mkdir(parents=True, exist_ok=True)
        for folder in self.data:
            shutil.copytree(EXAMPLES / "data" / folder, dest / "data" / folder, dirs_exist_ok=True)
        if self.values:
            shutil.copy(EXAMPLES / self.values, dest / self.values)
        return Path(shutil.copy(self.path, dest / self.example))


def short_run(steps: int, lr: str, batch: int, seq_len: int, max_new_tokens: int) -> tuple[str, ...]:
    """A stand-in's training: a few steps on the example data, evaluated halfway and at the end; the export
    verified on 3 held-out conversations."""
    return (f"data.max_seq_len={seq_len}", "training.epochs=1", f"training.max_steps={steps}",
            f"training.learning_rate={lr}", f"training.per_device_batch_size={batch}", "training.grad_accum=1",
            f"training.eval_steps={steps // 2}", f"eval.max_new_tokens={max_new_tokens}",
            "export.verify.golden_conversations=3")


SEEDS: dict[str, Seed] = {
    "seed000": Seed(  # two of the eight dimensions; LoRA on attention and on the experts, as the real form
        "seed000-governance.yaml", "gpt_oss",
        standin=("matrix.dimension=[lineage,privacy]", "data.train=data/seed000/${matrix.dimension}/train.jsonl",
                 "data.eval=data/seed000/${matrix.dimension}/eval.jsonl", *short_run(24, "3.0e-3", 4, 256, 16),
                 "eval.num_samples=2", RANDOM_Q4_BASE, DATED),
        variants=(("base_model=unsloth/gpt-oss-20b-unsloth-bnb-4bit", "model.quantization=4bit"),),
        data=("seed000",),
    ),
    "seed001": Seed(  # Harmony rows with `thinking`, the analysis channel masked, Mermaid / source metrics
        "seed001-semanticwiki.yaml", "gpt_oss",
        standin=("data.train=data/seed001/train.jsonl", "data.eval=data/seed001/eval.jsonl",
                 "eval.sources_root=data/seed001/repo", *short_run(24, "3.0e-3", 2, 512, 48), "eval.num_samples=2",
                 RANDOM_Q4, DATED),
        data=("seed001",),
    ),
    "seed003": Seed(
        "seed003-math-tutor.yaml", "phi3",
        standin=("model.quantization=none", "data.train=[data/seed003/sft_data.jsonl]",
                 "data.eval=data/seed003/eval.jsonl", *short_run(12, "2.0e-3", 4, 128, 12),
                 "export.imatrix.conversations=4"),
        variants=(("base_model=meta-llama/Meta-Llama-3-8B-Instruct",), ("base_model=Qwen/Qwen2-1.5B-Instruct",)),
        data=("seed003",),
    ),
    "seed002": Seed(  # DeepSeek-R1-Distill-Qwen: Qwen2 with DeepSeek's tokenizer; QLoRA kept (bitsandbytes runs 4-bit on CPU)
        "seed002-pushback.yaml", "deepseek_r1_qwen",
        standin=("model.chat_template=data/seed002/deepseek-r1-think.jinja", "data.train=data/seed002/train.jsonl",
                 "data.eval=data/seed002/eval.jsonl", *short_run(12, "2.0e-3", 2, 512, 12)),
        data=("seed002",),
    ),
    "seed004": Seed(
        "seed004-ghost-architect.yaml", "gemma3",
        standin=("data.train=data/seed004/train.jsonl", "data.eval=data/seed004/eval.jsonl",
                 *short_run(12, "2.0e-3", 2, 512, 12)),
        values="seed004-values.yaml",
        data=("seed004",),
    ),
}
