"""`python -m trainer.export --spec job.yaml`: see trainer/export/run.py."""

from trainer.quiet import plain_progress

plain_progress()  # before any library imports tqdm: it reads TQDM_MININTERVAL once, at import

from trainer.export.run import main  # noqa: E402

raise SystemExit(main())
