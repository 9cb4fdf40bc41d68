"""`python -m trainer.export --spec job.yaml`: see trainer/export/run.py."""

from trainer.export.run import main

raise SystemExit(main())
