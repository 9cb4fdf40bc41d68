"""A preference-tuning job (`training.objective: dpo | orpo | kto`): `FineTune`'s steps with TRL's trainer.

What differs from SFT (trainer/train/loop.py):
- Data: the preference rows of `data.train` / `data.eval`, rendered and tokenized by trainer/data/preference.py (our
  chat templates and bad-row policy), held in memory as a map-style dataset on every rank: the Trainer's distributed
  sampler shares them out, and on resume its own data skip finds the position (same world size: exact).
- Model: the same base and adapter (`adapter.init_from` starts from a trained one). The reference is TRL's frozen copy
  of that adapter as it starts (trainer/train/trl_adapter.py): no second copy of the model.
- Training: TRL's DPOTrainer / KTOTrainer / ORPOTrainer with our checkpoints, SIGTERM stop, MLflow and progress
  callbacks; TRL's metrics (rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/...) go to
  MLflow as they are logged, eval ones too.
"""

from __future__ import annotations

from datasets import Dataset
from transformers import PrinterCallback

from trainer.data.preference import build_preference
from trainer.tracking.speed import Speed
from trainer.tracking.tracker import Tracker
from trainer.train import checkpoint, resume
from trainer.train.loop import FineTune
from trainer.train.trl_adapter import TRAINERS


class PreferenceTune(FineTune):
    """`FineTune` with preference data and TRL's trainer for `training.objective`."""

    def _find_checkpoint(self) -> None:
        """As SFT's, on the same world size only: the Trainer's data skip counts batches of this rank's sampler."""
        super()._find_checkpoint()
        if self.resume is not None and self.resume.entry.world_size != self.args.world_size:
            raise resume.ResumeError(
                f"checkpoint {self.resume.entry.name} of job {self.name} was trained on {self.resume.entry.world_size} "
                f"rank(s), and this start has {self.args.world_size}: a {self.spec.training.objective} job resumes on "
                "the world size it was stopped on (its data position is the Trainer's sampler's). Resume it with the "
                "same resources.nodes and resources.gpus_per_node")

    def load_data(self) -> None:
        self.load_tokenizer()
        items, self.train_stats = build_preference(self.spec, self.tokenizer, "train", base_dir=self.base_dir)
        self.say(self.train_stats.report())
        self.train_rows = Dataset.from_list(items)
        self.eval_rows, self.eval_stats = None, None
        if self.spec.data.eval is not None:
            items, self.eval_stats = build_preference(self.spec, self.tokenizer, "eval", base_dir=self.base_dir)
            self.say(self.eval_stats.report())
            self.eval_rows = Dataset.from_list(items)
        per = "pairs" if self.spec.training.objective != "kto" else "rows"
        self.say(f"{self.spec.training.objective}: {self.spec.training.per_device_batch_size} {per} per micro-batch, "
                 "padded (preference rows are never packed: data.packing does not apply)")
        self._choose_samples()

    def _make_trainer(self, tracker: Tracker) -> resume.ResumableTrainer:
        spec = self.spec
        checkpointer, callbacks = self._job_parts(tracker)
        cls = TRAINERS[spec.training.objective]
        speed = Speed.for_run(self.model, spec, self.args.device, self.tokenizer, self.say, tracker,
                              labelled_head=cls.labelled_head)  # tokens/s, MFU: the rows each step runs (trl_adapter)
        trainer = cls(model=self.model, args=self.args, train_dataset=self.train_rows, eval_dataset=self.eval_rows,
                      processing_class=self.tokenizer, callbacks=callbacks, checkpointer=checkpointer, speed=speed)
        trainer.remove_callback(PrinterCallback)
        if self.resume is not None and self.resume.step >= trainer.args.max_steps > 0:
            raise resume.ResumeError(
                f"checkpoint {self.resume.entry.name} of job {self.name} is at step {self.resume.step}, and the job "
                f"has {trainer.args.max_steps} steps: nothing is left to train. Its weights are in "
                f"{checkpoint.folder(self.output)}; to train again, use another output.uri")
        return trainer  # type: ignore[return-value]

    def train(self) -> None:
        seconds = self._run_trainer()
        if seconds is None:
            return
        self.say(f"trained {self.trainer.state.global_step} steps of {self.spec.training.objective} in "
                 f"{seconds:.1f}s: {self.trainer.speed.summary_text(self.args.world_size)}")
        if self.eval_rows is not None:
            metrics = self.trainer.evaluate()
            self.say(f"eval loss {metrics['eval_loss']:.4f}" + "".join(
                f", {k.removeprefix('eval_')} {v:.3f}" for k, v in metrics.items() if k.startswith("eval_rewards/")))
        self._sample("after")
        self._show_samples()
