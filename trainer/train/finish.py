"""How a job ends (trainer/train/loop.py's `FineTune`): the outputs and `_SUCCESS` written last (`save`), the
MLflow run ended, and on a failure `_FAILED` for the export job waiting for this run (`cleanup`, `mark_failed`).
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime

from trainer import ranks, storage
from trainer import say as out
from trainer.model import load as models
from trainer.spec.io import dump_spec, spec_hash
from trainer.tracking import samples as sampling
from trainer.tracking.tracker import stats_json
from trainer.train import start_export


class Finish:
    """`FineTune`'s last steps; they use what its earlier ones set up (`output`, `staging`, `trainer` ...)."""

    def save(self) -> dict:
        out, main, tracker = self.staging, self.main, self.tracker
        assert tracker is not None
        if main:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
        rows_trained = self.trainer.rows_so_far()  # a collective: every rank
        self.trainer.accelerator.wait_for_everyone()
        if self.pissa_init is not None:  # only ddp / zero2 (check_hardware): the whole adapter is on rank 0
            if main:
                models.save_converted_adapter(self.trainer.model, out / "adapter", self.pissa_init)
        else:
            self.trainer.save_model(str(out / "adapter"))  # every rank: gathers ZeRO-3 shards; rank 0 writes
        if not main:
            return {}
        (out / "adapter" / "training_args.bin").unlink(missing_ok=True)
        self.tokenizer.save_pretrained(out / "tokenizer")
        (out / "spec.yaml").write_text(dump_spec(self.spec), encoding="utf-8")
        (out / "data_stats.json").write_text(stats_json(self.train_stats, self.eval_stats), encoding="utf-8")
        (out / "samples.json").write_text(json.dumps(sampling.table(self.samples), indent=2), encoding="utf-8")
        files = storage.publish_dir(out, self.output)
        tracker.log_artifacts(out / "adapter", "adapter")
        tracker.log_artifact(out / "data_stats.json")
        if self.samples:
            tracker.log_table(sampling.table(self.samples), "samples.json")
        losses = [h["loss"] for h in self.trainer.state.log_history if "loss" in h]
        marker = {
            "job_name": self.name, "run_id": tracker.run_id, "tracking_uri": tracker.uri,
            "spec_hash": spec_hash(self.spec), "base_model": self.spec.base_model,
            "steps": self.trainer.state.global_step, "final_loss": losses[-1] if losses else None,
            "train_loss": self.result.training_loss, "tokens_trained": self.trainer.tokens_trained,
            "rows_trained": rows_trained, "resumes": self._checkpoint_extra()["resumes"],
            **(self.trainer.speed.summary(self.args.world_size) if self.trainer.speed else {}),  # this attempt's rates
            "files": files, "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        tracker.log_metrics({"data/rows_trained": rows_trained}, step=self.trainer.state.global_step)
        if unsent := tracker.end("FINISHED"):
            target = storage.join(self.output, "mlflow-unsent.jsonl")
            storage.write_text(target, "".join(json.dumps(m) + "\n" for m in unsent))
            self.say(f"{len(unsent)} metric(s) MLflow did not take are in {target}")
        if storage.is_remote(self.output) and not self.spec.tracking.mlflow_uri:
            storage.publish_dir(self.work / "mlflow", storage.join(self.output, "mlflow"))
        storage.write_text(storage.join(self.output, "_SUCCESS"), json.dumps(marker, indent=2) + "\n")
        self.say(f"wrote {len(files)} files and _SUCCESS to {self.output}")
        start_export.start()  # the chart's suspended export Job, when there is one (never fails training)
        self.say(f"MLflow run {tracker.run_id} — tracking URI {tracker.uri}")
        return marker

    def cleanup(self, ok: bool, error: str | None = None) -> None:
        """`ok`: finished or stopped for a restart (preempted); otherwise failed: `_FAILED` for the export job."""
        if self.tracker is not None and not ok:
            self.tracker.end("FAILED", timeout=min(30, self.spec.tracking.flush_timeout))
        elif self.tracker is not None and self.preempted:  # unsent metrics are in the checkpoint
            self.tracker.end("KILLED", timeout=min(10, self.spec.tracking.flush_timeout))
        if not ok and getattr(self, "output", None):
            self.mark_failed(error)
        if ok and ranks.is_local_main() and getattr(self, "work", None):
            shutil.rmtree(self.work, ignore_errors=True)

    def mark_failed(self, error: str | None) -> None:
        """`_FAILED` beside where `_SUCCESS` would be: the export job waiting for this run stops at once."""
        marker = {"job_name": self.name, "rank": self.rank, "error": error or "see the training logs",
                  "failed_at": datetime.now(UTC).isoformat(timespec="seconds")}
        try:
            storage.write_text(storage.join(self.output, "_FAILED"), json.dumps(marker, indent=2) + "\n")
        except Exception as e:  # the failure being reported matters more than this marker
            out.warn(f"could not write {storage.join(self.output, '_FAILED')}: {e}")
