"""Sample answers before and after training (trainer/train/loop.py's `FineTune`): the prompts of `eval` or of the
data, answered by the model as it trains (trainer/tracking/samples.py)."""

from __future__ import annotations

from trainer.eval import room
from trainer.eval.reply import cut_short
from trainer.tracking import samples as sampling


class Samples:
    """`FineTune`'s sample answers; they use its `spec`, `resume`, `samples`, `trainer`, `tokenizer`, `main` and
    `say`."""

    def _choose_samples(self) -> None:
        """The prompts to sample, said with where they came from; and a warning when `eval.max_new_tokens` is
        shorter than the reference replies answers are compared to (trainer/eval/room.py)."""
        self.samples, where = sampling.choose(self.spec, self.base_dir)  # every rank: ZeRO-3 generates on all
        self.say(f"samples: {where}")
        convs, source = room.held_out_conversations(self.spec, self.base_dir)
        if warning := room.too_short(room.reply_lengths(convs, self.tokenizer), self.spec.eval.max_new_tokens, source):
            self.say(f"warning: {warning}")

    def _samples_before(self) -> None:
        """Sample answers before training: a resumed job keeps its first attempt's."""
        before = self.resume.state.get("samples_before") if self.resume else None
        if before is not None and len(before) == len(self.samples):
            for sample, saved in zip(self.samples, before, strict=True):
                if saved is not None:
                    sample.restore("before", saved)  # as the first attempt answered, not again
        elif self.spec.training.strategy == "zero3":
            self.say("samples before training skipped: ZeRO-3 shards the weights while loading")
        else:
            self._sample("before")

    def _sample(self, key: str) -> None:
        if self.spec.training.strategy == "fsdp":
            return self.say(f"samples {key} training skipped: not supported with fsdp yet")
        if self.spec.training.strategy == "zero3":  # every rank takes part in each sharded forward
            sampling.generate(self.trainer.model, self.tokenizer, self.samples, key, self.spec.eval.max_new_tokens, True)
        elif self.main and self.samples:
            sampling.generate(self.trainer.model, self.tokenizer, self.samples, key, self.spec.eval.max_new_tokens)

    def _show_samples(self) -> None:
        """The answers before and after training, and a warning when replies were cut short while reasoning."""
        if not self.samples:
            return
        self.say("samples (before → after):\n" + sampling.render(self.samples))
        replies = [reply for s in self.samples for reply in s.replies.values()]
        if warning := cut_short(replies, self.spec.eval.max_new_tokens):
            self.say(f"samples: {warning}")
