"""Backbones, projector/predictor heads and the contrastive frameworks."""
