"""What the per-trial Ray processes import: nothing heavy they do not use.

Every Tune trial starts a dozen Ray processes; Ray Train's ``DatasetManager`` and
``SplitCoordinator`` unpickle the data pipeline's plan (so import ``pipelines.data.read_tasks``), and the
trial driver and training worker import the training loop. torch costs ~1.6 CPU-seconds per
process and torchvision (which pulls in ``torch._dynamo``) ~1.5 more, so they stay out where unused.
Each case runs in a fresh interpreter, where ``sys.modules`` says what an import really pulled in.
"""

from __future__ import annotations

import subprocess
import sys

import pytest


def _imported_after(module: str, heavy: tuple[str, ...]) -> set[str]:
    code = f"import sys, {module}; print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


DATA_PLAN = [
    "pipelines.data.read_tasks",
    "pipelines.data.loader",
    "pipelines.data.recipes",
    "pipelines.data.monitor",
]
TRAINING = [
    "pipelines.training.pretrainer",
    "pipelines.training.worker",
]  # what pretrain() and the workers load


@pytest.mark.parametrize("module", DATA_PLAN)
def test_the_data_pipeline_plan_unpickles_without_torch_or_hydra(module: str) -> None:
    assert _imported_after(module, ("torch", "torchvision", "hydra", "omegaconf")) == set()  # ~0.1 s each


@pytest.mark.parametrize("module", TRAINING)
def test_training_code_leaves_torchvision_until_a_torchvision_network_is_built(module: str) -> None:
    assert "torchvision" not in _imported_after(module, ("torchvision", "torch._dynamo"))


def test_building_a_resnet_still_gets_torchvisions_network() -> None:
    from pipelines.models.backbones import build_backbone

    model = build_backbone("resnet18", image_size=32, stem="cifar")
    assert type(model).__module__ == "torchvision.models.resnet"
    assert model.feature_dim == 512
    # torchvision resnet18: 11,689,512 parameters, minus fc (512 x 1000 + 1000), minus the 7x7 stem
    # plus the 3x3 one (64 x 3 x 49 -> 64 x 3 x 9)
    assert sum(p.numel() for p in model.parameters()) == 11_689_512 - 513_000 - 64 * 3 * (49 - 9)
