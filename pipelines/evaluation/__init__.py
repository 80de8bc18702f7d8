"""Judging an encoder: kNN monitor, linear probe on frozen features, BatchNorm recomputation."""
