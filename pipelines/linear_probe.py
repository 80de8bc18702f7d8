"""Linear probe and kNN of a pretrained run's encoder, on Ray (one worker; a GPU with eval.use_gpu=true).

    python pipelines/linear_probe.py run=~/cacr-runs/demo                       # the run's eval.protocol
    python pipelines/linear_probe.py run=~/cacr-runs/demo eval/protocol=small_scale   # the full protocol
    python pipelines/linear_probe.py run=<run>/checkpoint_e0200_s00078000 eval/protocol=moco_v2
    python pipelines/linear_probe.py run=<run> eval.protocol.val_fraction=0.1   # select the epoch on val
    python pipelines/linear_probe.py run=<webvision run> eval/protocol=moco_v2 eval_dataset.root=<in1k shards>
    python pipelines/linear_probe.py run=<resnet50 run> backbone=r-50-1000ep.pth.tar eval/protocol=moco_v3

The probe starts from the run's own ``eval`` settings; what the command line sets replaces them.
With ``eval_dataset.root`` it judges on another dataset's shards, with that dataset's classes
(the paper's protocol for WebVision and ImageNet-22K runs: a linear probe on ImageNet-1K). With
``backbone=<file>`` it judges that file's weights instead of the checkpoint's (a ``backbone.pt``,
an export, or an official CACR-SSL / MoCo checkpoint), with the run's model, data and settings.

Adds ``linear_probes.<protocol>`` to the run's ``results.json`` (named with what differs from
the protocol's shipped settings, the other dataset, or an earlier checkpoint, so that probes of
other settings keep their own entries) and rewrites ``results.md`` and ``report.png``; prints a
short table at the end.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pipelines.config.command_line import run_hydra
from pipelines.core.config_schema import register
from pipelines.probe.run import main_with_errors

register()  # the config groups' typed schemas, before Hydra composes


@hydra.main(version_base="1.3", config_path="../configs", config_name="linear_probe")
def main(cfg: DictConfig) -> None:
    """Resolve the config to a plain dict and hand off to the probe driver."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain["overrides"] = list(HydraConfig.get().overrides.task)  # which eval keys replace the run's own
    sys.exit(main_with_errors(plain))


if __name__ == "__main__":
    run_hydra(main)
