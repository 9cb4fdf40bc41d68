"""Experiment tracking: the MLflow run of a job (`tracker`), the outbox that keeps metrics through an outage
(`outbox`), and the sample answers logged before and after training (`samples`). Never imports `launcher`."""
