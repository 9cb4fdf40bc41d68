"""How a job starts (trainer/train/loop.py's `FineTune`): each start is counted against
`resources.max_restarts`, and when the output's checkpoints are this job's, the latest good one is fetched to
every node to resume from (trainer/train/checkpoint.py, trainer/train/resume.py).
"""

from __future__ import annotations

import json

from trainer import storage
from trainer.spec.io import flatten
from trainer.train import checkpoint, preemption, resume


class Restarts:
    """`FineTune`'s start-up steps, and what its checkpoints record of them; they use its `spec`, `output`, `name`,
    `main`, `args`, `work`, `say`, and (`_checkpoint_extra`) `tracker`, `resume` and `samples`."""

    def _count_start(self) -> None:
        """Rank 0 records this start (trainer/train/checkpoint.py); past `resources.max_restarts` restarts every rank stops
        with exit 2, which fails the Job: preemptions are replaced without counting, so this is their bound."""
        starts = max(resume.gather(checkpoint.count_start(self.output, self.name) if self.main else 0))
        restarts, budget = starts - 1, self.spec.resources.max_restarts
        if restarts > budget:
            raise resume.ResumeError(
                f"job {self.name} has restarted {restarts} times (preemptions, evictions, node drains, retried "
                f"failures: {storage.join(checkpoint.folder(self.output), checkpoint.RESTARTS)}), more than "
                f"resources.max_restarts = {budget}; exiting {preemption.EXIT_USER_ERROR}, which fails the Job. The "
                f"logs say why it kept stopping (launch logs {self.name}); to go on, resume it with a larger budget: "
                f"launch submit SPEC --resume {self.name} --set resources.max_restarts=N"
            )
        if restarts:
            self.say(f"restart {restarts} of at most {budget} (resources.max_restarts)")

    def _find_checkpoint(self) -> None:
        """Resume when the output's checkpoints are this job's; fetch the latest good one to every node."""
        manifest = checkpoint.read_manifest(self.output)
        world = self.args.world_size
        chosen = resume.plan(manifest, self.name, flatten(self.spec), world, self.spec.training.strategy)
        if chosen is None:
            if manifest is not None and manifest.latest is not None:
                self.say(f"{checkpoint.folder(self.output)} holds checkpoints of job {manifest.job_name} (step "
                         f"{manifest.latest.step}), not of this job {self.name}: training starts at step 0 and replaces "
                         f"them at its first checkpoint (launch submit --local --resume {manifest.job_name} resumes it)")
            return
        with self.args.main_process_first(local=True, desc="fetch the checkpoint"):
            entry, local = checkpoint.fetch_latest(self.output, chosen, self.work / "resume", say=self.say)
        if len(set(resume.gather(entry.step))) != 1:
            raise checkpoint.CheckpointError(f"the nodes fetched different checkpoints from {self.output}; start again")
        state = json.loads((local / checkpoint.STATE).read_text(encoding="utf-8"))
        self.resume = resume.Resume(chosen, entry, local, state)
        self.say(f"resuming job {self.name} from {entry.name} ({entry.world_size} rank(s) then, {world} now), "
                 f"MLflow run {state.get('run_id')}")

    def _checkpoint_extra(self) -> dict:
        """What rank 0 adds to each checkpoint besides the Trainer's files and the data position."""
        assert self.tracker is not None
        resumes = list(self.resume.state.get("resumes", [])) if self.resume else []
        if self.resume is not None:
            resumes.append({"step": self.resume.step, "world_size_before": self.resume.entry.world_size,
                            "world_size": self.args.world_size})
        return {"run_id": self.tracker.run_id, "samples_before": [s.saved("before") for s in self.samples],
                "unsent_metrics": self.tracker.unsent(), "resumes": resumes}
