"""`python -m trainer.train --spec job.yaml`: what every rank runs (trainer/train/loop.py)."""

import sys

from trainer.quiet import plain_progress

plain_progress()  # before transformers imports tqdm: it reads TQDM_MININTERVAL once, at import

from trainer.train.loop import main  # noqa: E402

sys.exit(main())
