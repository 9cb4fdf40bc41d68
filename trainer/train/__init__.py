"""The training run in a pod: the loop (`loop`, `python -m trainer.train`), checkpoints and resuming, SIGTERM
and preemption, PID 1's supervisor, each rank's data position, the loss, and starting the export Job.
Imports the spec, data, model and tracking rooms; never `launcher`."""
