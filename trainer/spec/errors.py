"""The one error hierarchy. Every error kubetune reports to a user, rather than a bug's traceback, is a
`KubetuneError` carrying the exit code its process ends with: the CLI (launcher/cli/app.py) and each pod entry
point (trainer/train/loop.py, trainer/export/run.py, trainer/preflight/__main__.py) have one handler for it.

    KubetuneError        exit 1: something failed that may work on another try (a pod, a rendezvous)
    └── UsageError       exit 2: the user's to fix (spec, data, model, flags); a retry cannot help, so the
                         chart's podFailurePolicy fails the Job at once on it (trainer/spec/exits.py)
"""

from __future__ import annotations

from trainer.spec.exits import EXIT_USER_ERROR


class KubetuneError(Exception):
    """An error for the user to read: its message says what failed and, where one is known, what to do."""

    exit_code = 1


class UsageError(KubetuneError):
    """The user's to fix: the message names the field, file, row or flag, and the fix."""

    exit_code = EXIT_USER_ERROR
