"""The one error the export raises for a problem the user can act on."""

from trainer.spec.errors import UsageError


class ExportError(UsageError):
    """An export step that cannot go on; the message says what failed and what to do."""
