"""The platform's Python package: Ray Data, Ray Train and Ray Tune pipelines, and entry points."""
