"""Ray Tune searches over pretraining settings (``pipelines/tune.py``)."""
