"""trainer/train/trl_adapter.py: what our preference trainers rely on in TRL beyond its documented constructor.
A TRL upgrade that changes any of it fails here first: the overridden methods' signatures, the frozen reference
adapter TRL builds from the starting one, and ORPO's columns (compared with TRL's own `tokenize_row`)."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from datasets import Dataset  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import DPOConfig, DPOTrainer, KTOTrainer  # noqa: E402
from trl.experimental.orpo import ORPOConfig, ORPOTrainer  # noqa: E402
from trl.trainer.utils import use_adapter  # noqa: E402

from tests.models import tiny_model  # noqa: E402
from trainer.model.arch import EXPERT_PARAMETERS  # noqa: E402
from trainer.tracking.log_lines import trained_tokens  # noqa: E402
from trainer.train import trl_adapter  # noqa: E402
from trainer.train.resume import Checkpointer  # noqa: E402


def test_the_overridden_methods_keep_their_signatures() -> None:
    for cls in (DPOTrainer, KTOTrainer):
        assert list(inspect.signature(cls._prepare_dataset).parameters) == [
            "self", "dataset", "processing_class", "args", "dataset_name"], cls
    assert list(inspect.signature(ORPOTrainer.tokenize_row).parameters) == ["self", "feature", "model"]
    assert "calculate_KL" in inspect.getsource(KTOTrainer.__init__)  # read by KtoTrainer._prepare_dataset
    for cls in (DPOTrainer, KTOTrainer):  # our _precompute_ref_logps: TRL's passes, the values kept in memory
        assert list(inspect.signature(cls._precompute_ref_logps).parameters) == [
            "self", "dataset", "name", "batch_size"], cls
        assert list(inspect.signature(cls.compute_ref_log_probs).parameters) == ["self", "model", "inputs"], cls
        assert "self._precompute_engine = None" in inspect.getsource(cls.__init__), cls
    from trl.models import prepare_deepspeed  # noqa: F401  (the ZeRO inference engine TRL builds for them)


def rows(tokenizer, end: str = "<|eot_id|>") -> list[dict[str, list[int]]]:
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Capital of France?"}],
                                           add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    chosen = tokenizer(f"ANSWER: Paris{end}", add_special_tokens=False)["input_ids"]
    rejected = tokenizer(f"paris i guess{end}", add_special_tokens=False)["input_ids"]
    return [{"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}] * 4


@pytest.fixture(scope="module")
def llama() -> tuple[Path, object]:
    path = tiny_model("llama")
    return path, AutoTokenizer.from_pretrained(path)


def peft_model(path: Path, target_parameters: list[str] | None = None):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0,
                                            target_parameters=target_parameters,
                                            init_lora_weights=False))  # B != 0: the copy is visible


@pytest.mark.parametrize("arch", ["llama", "gpt_oss"])
def test_dpo_keeps_a_frozen_copy_of_the_starting_adapter_and_never_saves_it(arch: str, tmp_path: Path) -> None:
    """The reference is the starting adapter, frozen, and it stays so while the adapter trains; on gpt-oss too,
    whose expert LoRA (`adapter.target_parameters`) wraps 3-D parameters, not Linear layers (TRL before PEFT 0.20
    silently used the base model as the reference there)."""
    path = tiny_model(arch)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = peft_model(path, list(EXPERT_PARAMETERS.get(arch, ())) or None)
    start = {k: v.detach().clone() for k, v in model.named_parameters() if ".default." in k}
    assert arch != "gpt_oss" or any(".experts." in k for k in start)
    ids = torch.tensor([rows(tokenizer, end=tokenizer.eos_token)[0]["prompt_ids"]])
    with torch.no_grad():
        start_logits = model(input_ids=ids).logits
    args = DPOConfig(output_dir=str(tmp_path / "ckpt"), per_device_train_batch_size=2, max_steps=2, use_cpu=True,
                     gradient_checkpointing=False, bf16=False, report_to="none", remove_unused_columns=False,
                     learning_rate=1e-2, save_strategy="no")
    checkpointer = Checkpointer(str(tmp_path / "out"), "t", {}, 1, dict, lambda _: None)
    trainer = trl_adapter.DpoTrainer(model=model, args=args,
                                     train_dataset=Dataset.from_list(rows(tokenizer, end=tokenizer.eos_token)),
                                     processing_class=tokenizer, checkpointer=checkpointer)
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    assert trl_adapter.REF_ADAPTER in unwrapped.peft_config
    for name, value in start.items():
        ref = dict(unwrapped.named_parameters())[name.replace(".default.", f".{trl_adapter.REF_ADAPTER}.")]
        assert torch.equal(ref, value) and not ref.requires_grad
    # MFU's rows of a step (trainer/tracking/speed.py): the pairs trained, then their reference forward
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    assert [forward for _, forward in trainer.step_rows(batch)] == [False, True]
    trainer.train()  # the adapter moves (experts included); the reference forward is still the starting model's
    trained = dict(unwrapped.named_parameters())
    moved = {k for k, v in start.items() if not torch.equal(trained[k], v)}
    assert {k for k in start if "lora_B" in k} <= moved, sorted(set(start) - moved)
    with torch.no_grad(), use_adapter(unwrapped, trl_adapter.REF_ADAPTER):
        assert torch.equal(unwrapped(input_ids=ids).logits, start_logits)
    with torch.no_grad():
        assert not torch.allclose(unwrapped(input_ids=ids).logits, start_logits, atol=1e-4)
    trainer.save_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "adapter" / trl_adapter.REF_ADAPTER).exists()
    with pytest.raises(ValueError, match="lack"):
        trainer._prepare_dataset(Dataset.from_list([{"prompt_ids": [1]}]), tokenizer, args, "train")


@pytest.mark.parametrize("objective", ["dpo", "kto"])
def test_precomputed_reference_values_equal_trls_and_no_cache_file_is_written(llama, tmp_path: Path,
                                                                              objective: str) -> None:
    """TRL's own `_precompute_ref_logps` writes the values to a cache file on rank 0 that the other ranks cannot
    read on another node (or, for an in-memory dataset, in another process); ours must give the same values."""
    from trl import KTOConfig

    path, tokenizer = llama
    data = rows(tokenizer)
    if objective == "kto":
        data = [{"prompt_ids": r["prompt_ids"], "completion_ids": r[side], "label": side == "chosen_ids"}
                for r in data for side in ("chosen_ids", "rejected_ids")]
    config, cls, base = ((DPOConfig, trl_adapter.DpoTrainer, DPOTrainer) if objective == "dpo"
                         else (KTOConfig, trl_adapter.KtoTrainer, KTOTrainer))
    args = config(output_dir=str(tmp_path / "ckpt"), per_device_train_batch_size=2, max_steps=1, use_cpu=True,
                  gradient_checkpointing=False, bf16=False, report_to="none", remove_unused_columns=False,
                  precompute_ref_log_probs=True)
    checkpointer = Checkpointer(str(tmp_path / "out"), "t", {}, 1, dict, lambda _: None)
    trainer = cls(model=peft_model(path), args=args, train_dataset=Dataset.from_list(data), processing_class=tokenizer,
                  checkpointer=checkpointer)
    ours = trainer.train_dataset
    assert set(trainer.reference_columns) <= set(ours.column_names), ours.column_names
    assert not ours.cache_files  # in memory: nothing another rank would have to read
    dataset = Dataset.from_list(data)
    if objective == "kto":
        dataset = trainer._prepare_dataset(dataset, tokenizer, args, "train")  # the KL completions
    theirs = base._precompute_ref_logps(trainer, dataset, "train", 2)
    for column in trainer.reference_columns:
        assert torch.allclose(torch.tensor(ours[column]), torch.tensor(theirs[column]), rtol=1e-6, atol=1e-6), column
    # MFU's rows of a step: no reference forward any more; KTO's KL rows still run forward
    batch = trainer.data_collator([ours[i] for i in range(2)])
    parts = list(trainer.step_rows(batch))
    assert [forward for _, forward in parts] == ([False] if objective == "dpo" else [False, True])
    assert int((parts[0][0]["labels"] != -100).sum()) == int(trained_tokens(batch)) > 0


def test_orpo_columns_equal_trls_own_tokenization(llama, tmp_path: Path) -> None:
    path, tokenizer = llama
    row = rows(tokenizer, end=tokenizer.eos_token)[0]  # TRL's text path appends EOS to an answer without it
    args = ORPOConfig(output_dir=str(tmp_path), max_length=64, use_cpu=True, gradient_checkpointing=False,
                      bf16=False, report_to="none")
    checkpointer = Checkpointer(str(tmp_path / "out"), "t", {}, 1, dict, lambda _: None)
    ours = trl_adapter.OrpoTrainer(model=peft_model(path), args=args, train_dataset=Dataset.from_list([row] * 2),
                                   processing_class=tokenizer, checkpointer=checkpointer)
    text = {"prompt": tokenizer.decode(row["prompt_ids"]), "chosen": tokenizer.decode(row["chosen_ids"]),
            "rejected": tokenizer.decode(row["rejected_ids"])}
    theirs = ORPOTrainer.tokenize_row(ours, text)  # TRL's own, on the same tokens as text
    mine = ours.tokenize_row(row)
    for key in mine:
        assert mine[key] == theirs[key], key
