"""Errors `launch` reports without a traceback: user errors exit 2, a failed pod exits 1."""

from __future__ import annotations

from trainer.spec.errors import KubetuneError, UsageError


class UserError(UsageError):
    """Something the user can fix (bad spec, helm missing, helm failing). Exit code 2."""

    exit_code = 2

    def __init__(self, message: str, problems: list[str] | None = None):
        self.message = message
        self.problems = problems or []
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join([self.message, *(f"  - {p}" for p in self.problems)])


class PodFailed(KubetuneError):
    """A pod of a local run exited non-zero (exit code 1), or the run was interrupted (130)."""

    def __init__(self, message: str, exit_code: int = 1):
        self.message = message
        self.exit_code = exit_code
        super().__init__(message)
