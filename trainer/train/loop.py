"""Fine-tune one adapter from one job spec: setup -> data -> model -> train -> save -> cleanup.

    python -m trainer.train --spec job.yaml [--set training.max_steps=10 ...]
    accelerate launch --config_file accelerate.yaml ... -m trainer.train --spec /etc/kubetune/spec.yaml

Every rank runs this file; rank 0 alone prints, tracks and writes. Results land in `output.uri`
(a folder or `s3://` prefix): `adapter/`, `tokenizer/`, `spec.yaml`, `data_stats.json`,
`samples.json`, and `_SUCCESS` last — a reader that sees the marker sees everything.

Checkpoints go to `output.uri/checkpoints/` every `training.save_steps` and when SIGTERM arrives
(then every rank stops at the same step and the process exits 75: trainer/train/preemption.py). A job
started again under the same name (`KUBETUNE_JOB_NAME`) resumes from the latest one: weights,
optimizer, scheduler, RNG, data position and MLflow run (trainer/train/resume.py, docs/operations.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import PrinterCallback, TrainerCallback, set_seed

from trainer import ranks, storage
from trainer import say as out
from trainer.data import Collator, build_dataset, template_date
from trainer.data.stream import TrainStream
from trainer.model import init_from
from trainer.model import load as models
from trainer.model.isolation import PackingCheck
from trainer.quiet import quiet_libraries
from trainer.spec.errors import UsageError
from trainer.spec.io import SpecError, flatten, load_spec, spec_arguments
from trainer.spec.job import JobSpec
from trainer.tracking.log_lines import ProgressPrinter
from trainer.tracking.progress_callback import ProgressCallback
from trainer.tracking.speed import Speed
from trainer.tracking.tracker import MlflowCallback, Tracker, job_name
from trainer.train import checkpoint, preemption, resume
from trainer.train.arguments import training_arguments
from trainer.train.finish import Finish
from trainer.train.head import choose as choose_head
from trainer.train.restarts import Restarts
from trainer.train.sampling import Samples

USER_ERRORS = (UsageError,)  # data, model, resume, checkpoint, strategy, metric errors: the user's to fix (exit 2)


class FineTune(Restarts, Samples, Finish):
    """One training run; its start-up steps are `Restarts`' (trainer/train/restarts.py), its sample answers
    `Samples`' (trainer/train/sampling.py), its last ones `Finish`'s (trainer/train/finish.py)."""

    def __init__(self, spec: JobSpec, base_dir: Path, signals: preemption.Signals | None = None):
        self.spec = spec
        self.base_dir = base_dir
        self.rank = ranks.rank()
        self.name = job_name(spec)
        self.tracker: Tracker | None = None
        self.signals = signals or preemption.Signals()
        self.resume: resume.Resume | None = None
        self.preempted = False

    def say(self, message: str) -> None:
        if self.rank == 0:
            out.say(message)

    def run(self) -> None:
        """The whole job in order: setup, data, model, training and, unless preempted, the outputs."""
        self.setup()
        self.load_data()
        self.load_model()
        self.train()
        if not self.preempted:
            self.save()

    def setup(self) -> None:
        spec = self.spec
        models.check_hardware(spec)
        cpu = spec.resources.gpu == "none"
        if cpu and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks.local_world_size()))
        self.output = storage.output_location(spec.output.uri, spec.name, self.base_dir)
        self.work = Path(os.environ.get("KUBETUNE_WORK_DIR") or tempfile.gettempdir()) / "kubetune" / self.name
        self.staging = self.work / "out"
        world = ranks.world_size()
        self.say(f"job {self.name}: base model {spec.base_model}, output {self.output}, world size {world}")
        # Built before the model: under ZeRO-3 from_pretrained must already see the DeepSpeed config.
        self.args = training_arguments(spec, self.work, self.name, cpu)
        self.main = ranks.is_main()
        if self.main:  # a rerun must not look finished (or failed) early
            for marker in ("_SUCCESS", "_FAILED"):
                if storage.exists(storage.join(self.output, marker)):
                    storage.remove(storage.join(self.output, marker))
        self._count_start()
        self._find_checkpoint()
        remote = storage.is_remote(self.output)
        run_id = self.resume.state.get("run_id") if self.resume else None
        self.tracker = Tracker(spec, self.work / "mlflow" if remote else Path(self.output), active=self.main,
                               run_id=run_id, resumed_step=self.resume.step if self.resume else None)
        note = self.tracker.note + (f", copied to {storage.join(self.output, 'mlflow')} at the end" if remote else "")
        self.say(f"MLflow run {self.tracker.run_id} at {self.tracker.uri}" + (f" — {note}" if self.tracker.note else ""))

    def load_tokenizer(self) -> None:
        """The base model and the adapter to start from (`adapter.init_from`) found (fetched once per node), and the
        tokenizer; templates that write today's date render the job's date instead (trainer/data/template_date.py)."""
        with self.args.main_process_first(local=True, desc="fetch the base model"):
            self.ref = models.resolve_base_model(self.spec.base_model, self.base_dir)
            self.parent = init_from.resolve(self.spec, self.base_dir)
        self.tokenizer = template_date.pin(models.load_tokenizer(self.ref, self.spec, self.base_dir),
                                           self.spec.data.template_date)
        self.say(template_date.describe(self.spec.data.template_date, self.tokenizer.chat_template))

    def load_data(self) -> None:
        self.load_tokenizer()
        # Each rank streams its own share of data.train at flat memory (trainer/data/stream.py).
        self.train_items = TrainStream(self.spec, self.tokenizer, base_dir=self.base_dir,
                                       rank=self.args.process_index, world_size=self.args.world_size)
        if self.spec.training.max_steps is None:  # epochs -> steps: one pass counts the packed rows first
            self.say("counted one pass before training (training.epochs without max_steps):\n"
                     + self.train_items.count_pass().report())
        self.train_stats = self.train_items.stats()  # nothing read yet; the counts come in at the end
        self.eval_items, self.eval_stats = None, None
        if self.spec.data.eval is not None:
            self.eval_items, self.eval_stats = build_dataset(self.spec, self.tokenizer, "eval", base_dir=self.base_dir)
            self.say(self.eval_stats.report())
        self._choose_samples()

    def load_model(self) -> None:
        started = time.perf_counter()
        set_seed(self.spec.training.seed)  # the adapter's initial weights: the same in every run of this spec
        base = models.load_base_model(self.ref, self.spec)
        self.model = models.add_adapter(base, self.spec, self.ref, self.parent)
        if self.parent is not None and self.tracker is not None:
            self.tracker.set_tags(self.parent.tags())  # the run's lineage: what it started from
        self.load_seconds = time.perf_counter() - started
        self.say(f"loaded {self.ref.describe()} in {self.load_seconds:.1f}s; {models.trainable_summary(self.model)}")
        self.pissa_init = None
        if self.spec.adapter.init == "pissa" and self.main:
            self.pissa_init = self.work / "pissa-init"
            models.save_initial_adapter(self.model, self.pissa_init)

    def _stream(self) -> TrainStream:
        """This rank's training stream, at the checkpoint's position when resuming; sets the step budget."""
        stream = self.train_items
        if self.resume is not None:
            stream.load_state_dict(self.resume.state["data"])  # re-sharded when the world size changed
        self.args.max_steps = self.spec.training.max_steps or self._epoch_steps(stream)
        if self.resume is not None and self.resume.step >= self.args.max_steps:
            raise resume.ResumeError(
                f"checkpoint {self.resume.entry.name} of job {self.name} is at step {self.resume.step}, and the job "
                f"has {self.args.max_steps} steps on {self.args.world_size} rank(s): nothing is left to train. Its "
                f"weights are in {checkpoint.folder(self.output)}; to train again, use another output.uri"
            )
        return stream

    def _epoch_steps(self, stream: TrainStream) -> int:
        """Optimizer steps of `training.epochs` passes: the steps done (a resumed job's) + the stream's steps left,
        counted from the rows all ranks trained, so that this also holds on another world size (collective)."""
        left = stream.steps_left()
        assert left is not None  # None only with training.max_steps
        return (self.resume.step if self.resume else 0) + left

    def _job_parts(self, tracker: Tracker) -> tuple[resume.Checkpointer, list[TrainerCallback]]:
        """What every objective's Trainer gets: the checkpointer, and the callbacks that track, print and stop."""
        spec = self.spec
        checkpointer = resume.Checkpointer(self.output, self.name, flatten(spec), spec.training.keep_checkpoints,
                                           self._checkpoint_extra, self.say)
        self.stop = resume.StopOnSignal(self.signals)
        callbacks = [MlflowCallback(tracker), ProgressPrinter(), self.stop]
        if self.main:  # live progress without MLflow: a file, or the Job's annotation (trainer/tracking/progress.py)
            callbacks.append(ProgressCallback())
        return checkpointer, callbacks

    def _make_trainer(self, tracker: Tracker) -> resume.ResumableTrainer:
        """The Trainer over this rank's stream, with the callbacks that track, print, stop and check packing."""
        spec = self.spec
        checkpointer, callbacks = self._job_parts(tracker)
        packing_check = None
        if spec.data.packing or spec.training.padding_free:  # samples share rows: checked before step 1, on the
            # model as the strategy wrapped it (trainer/model/isolation.py)
            packing_check = PackingCheck(Collator.for_spec(spec, self.tokenizer), len(self.tokenizer), self.say)
            callbacks.insert(0, packing_check)
        trainer = resume.ResumableTrainer(
            model=self.model, args=self.args, train_dataset=self._stream(), eval_dataset=self.eval_items,
            data_collator=Collator.for_spec(spec, self.tokenizer), checkpointer=checkpointer, callbacks=callbacks,
            speed=Speed.for_run(self.model, spec, self.args.device, self.tokenizer, self.say, tracker),  # tokens/s, MFU
            prefetch=spec.training.prefetch * spec.training.grad_accum,  # N optimizer steps' micro-batches ahead
            head=choose_head(spec.training.loss, self.model, say=self.say,  # the LM head where a label is
                             sharded=spec.training.strategy if spec.training.strategy in ("zero3", "fsdp") else None),
        )
        if packing_check is not None:
            packing_check.trainer = trainer
        trainer.remove_callback(PrinterCallback)  # ProgressPrinter says the same, readably
        return trainer

    def _run_trainer(self) -> float | None:
        """The Trainer made and run (from the checkpoint when resuming): the seconds it trained, or None when it
        stopped at a SIGTERM (a checkpoint written: the job resumes from it)."""
        tracker = self.tracker
        assert tracker is not None
        self.trainer = self._make_trainer(tracker)
        data_metrics = self.train_stats.as_metrics("data/")
        if self.eval_stats is not None:
            data_metrics |= self.eval_stats.as_metrics("data/eval/")
        tracker.log_metrics(data_metrics, step=0)  # a reattached run has them: the tracker skips them
        tracker.log_metrics({"load_seconds": self.load_seconds}, step=0)
        self._samples_before()
        if self.resume is not None:
            self.trainer.tokens_trained = int(self.resume.state.get("tokens_trained", 0))
            self.trainer.rows_before = int(self.resume.state.get("rows_trained", 0))
            tracker.requeue(self.resume.state.get("unsent_metrics", []))
        started = time.perf_counter()
        self.result = self.trainer.train(resume_from_checkpoint=str(self.resume.local_dir) if self.resume else None)
        steps = self.trainer.state.max_steps
        if self.stop.stopped_early(steps):
            self.preempted = True
            self.say(f"stopped at step {self.stop.stopped_at}/{steps} after SIGTERM; checkpoint "
                     f"{checkpoint.step_name(self.stop.stopped_at)} written: the job resumes from it when restarted")
            return None
        return time.perf_counter() - started

    def train(self) -> None:
        seconds = self._run_trainer()
        if seconds is None:
            return
        self.say(f"trained {self.trainer.state.global_step} steps in {seconds:.1f}s: "
                 f"{self.trainer.speed.summary_text(self.args.world_size)}")
        self.train_stats = self.train_items.finish()  # every rank: rows read, used, skipped, summed over ranks
        self.say(self.train_stats.report())
        assert self.tracker is not None
        self.tracker.log_metrics(self.train_stats.as_metrics("data/"), step=self.trainer.state.global_step)
        if self.eval_items is not None:
            metrics = self.trainer.evaluate()
            self.say(f"eval loss {metrics['eval_loss']:.4f}")
        self._sample("after")
        self._show_samples()


def job_class(spec: JobSpec) -> type[FineTune]:
    """`FineTune`, or for a preference objective its subclass with TRL's trainer (trainer/train/preference.py)."""
    if spec.training.objective == "sft":
        return FineTune
    from trainer.train.preference import PreferenceTune

    return PreferenceTune


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    signals = preemption.Signals().install()
    p = argparse.ArgumentParser(prog="python -m trainer.train", description="Fine-tune one adapter from a job spec.")
    args = spec_arguments(p).parse_args(argv)
    try:
        spec = load_spec(args.spec, args.set)
    except SpecError as e:
        out.text(e.render(), err=True)
        preemption.report_exit(preemption.EXIT_USER_ERROR)
        return preemption.EXIT_USER_ERROR
    job = job_class(spec)(spec, Path(args.base_dir or Path(args.spec).resolve().parent), signals)
    ok, code, error, together = False, 1, None, False
    try:
        job.run()
        ok, code, together = True, preemption.EXIT_PREEMPTED if job.preempted else 0, True  # no rank raised
    except USER_ERRORS as e:
        error, code = str(e), preemption.EXIT_USER_ERROR
        out.error(f"{e}")
    except BaseException as e:
        if not preemption.peer_lost(e):
            error = f"{type(e).__name__}: {e}".splitlines()[0][:500]
            raise
        if job.signals.received is not None:  # this pod was told to stop too: a preemption, not counted
            job.preempted, ok, code = True, True, preemption.EXIT_PREEMPTED
            out.warn(f"rank {job.rank}: a collective failed after SIGTERM ({str(e).splitlines()[0][:300]}); "
                     "stopping: the job resumes from its last checkpoint when restarted")
        else:  # a peer crashed or vanished, NCCL failed, a timeout: counted against job.backoffLimit
            # ok: no `_FAILED`, the Job may retry (and resume from the last checkpoint)
            job.preempted, ok, code = True, True, preemption.EXIT_PEER_LOST
            out.error(preemption.peer_lost_diagnosis(e, job.rank, job.name))
    finally:
        job.cleanup(ok, None if ok else error)
        if together:  # not after an error, a lost peer or a failed collective: its barrier could wait forever
            preemption.release_process_group()
        if ok or code == preemption.EXIT_USER_ERROR:  # last: a 0 says the run and its teardown are done
            preemption.report_exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
