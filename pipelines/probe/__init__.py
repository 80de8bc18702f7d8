"""Judging a finished run or a checkpoint again: the driver behind ``pipelines/linear_probe.py``."""
