"""The per-worker pretraining loop, checkpoints, schedules, optimisers and run metrics."""
