"""Pretraining on Ray Train: the driver, the per-worker state and epoch loop, resume, schedules."""
