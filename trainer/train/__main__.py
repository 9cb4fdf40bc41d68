"""`python -m trainer.train --spec job.yaml`: what every rank runs (trainer/train/loop.py)."""

import sys

from trainer.train.loop import main

sys.exit(main())
