"""The pods' exit codes: a contract between the trainer (which exits with them), the chart's podFailurePolicy
(which acts on them) and the launcher (which explains them). Constants only."""

EXIT_USER_ERROR = 2  # bad spec, data or model: a retry cannot help
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM after writing a checkpoint; a restart resumes
EXIT_PEER_LOST = 76  # EX_PROTOCOL: a collective failed, this pod not told to stop; counted against job.backoffLimit
EXIT_DIR = "KUBETUNE_EXIT_DIR"  # where each rank reports its code for the supervisor (trainer/train/supervise.py)
