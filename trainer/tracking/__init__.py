"""Experiment tracking: the MLflow run of a job (`tracker`), the outbox that keeps metrics through an outage
(`outbox`), the sample answers logged before and after training (`samples`), and the live progress published without
a tracking server (`progress`, `progress_callback`). Never imports `launcher`."""
