"""Options that reproduce the official code: per-view forward passes, per-worker negatives, fp16."""

from __future__ import annotations

import pathlib

import pytest
import torch

from pipelines.config.checks import check_config
from pipelines.core.errors import ConfigError
from pipelines.models.build import build_framework
from pipelines.training.pretrainer import Pretrainer, channels_last_for
from tests.unit.config.test_pretrain_config import composed
from tests.unit.models.test_frameworks import config, views

PRESETS = ["imagenet100_moco_v2_cacr", "webvision_moco_v2_cacr", "imagenet22k_moco_v2_cacr"]


def _batchnorm_model(cfg: dict) -> dict:
    cfg["model"]["norm"] = "batch"
    return cfg


def test_per_view_forward_encodes_each_view_alone_and_joint_all_at_once() -> None:
    x = views(B=6, V=3, seed=1)
    torch.manual_seed(0)
    per_view = build_framework(_batchnorm_model(config(forward="per_view")))
    torch.manual_seed(0)
    joint = build_framework(_batchnorm_model(config(forward="joint")))
    per_view(x), joint(x)
    (z_view,), (z_joint,) = per_view.last_inputs, joint.last_inputs
    fresh = build_framework(_batchnorm_model(config()))
    fresh.load_state_dict(per_view.state_dict())  # same weights; running stats do not enter train mode
    alone = torch.stack([fresh.online(x[:, v]) for v in range(3)])  # BatchNorm over one view's batch
    together = fresh.online(x.transpose(0, 1).reshape(18, 3, 32, 32)).view(3, 6, -1)
    torch.testing.assert_close(z_view, alone.detach())
    torch.testing.assert_close(z_joint, together.detach())
    assert not torch.allclose(z_view, z_joint, atol=1e-3)  # the BatchNorm statistics differ


def test_moco_v2_presets_take_the_official_per_worker_negatives_and_per_view_passes(tmp_path) -> None:
    for preset in PRESETS:
        cfg = composed(f"experiment={preset}", f"dataset.root={tmp_path}", f"trainer.storage_path={tmp_path}")
        assert cfg["framework"]["gather_negatives"] is False and cfg["framework"]["forward"] == "per_view"
    demo = composed("experiment=demo")
    assert demo["framework"]["gather_negatives"] is True


def test_every_preset_but_the_demo_takes_the_official_per_view_passes(tmp_path) -> None:
    """The demo alone normalises all views together (docs/training.md: +7.60 kNN points over random
    init in its 6 epochs, against +6.95 with per-view passes)."""
    folder = pathlib.Path(__file__).resolve().parents[3] / "configs" / "experiment"
    presets = sorted(p.stem for p in folder.glob("*.yaml"))
    assert len(presets) > 20
    for preset in presets:
        cfg = composed(f"experiment={preset}", f"dataset.root={tmp_path}", f"trainer.storage_path={tmp_path}")
        assert cfg["framework"]["forward"] == ("joint" if preset == "demo" else "per_view"), preset


@pytest.mark.parametrize(("framework", "objective", "gathers"), [("inbatch", "cacr_inbatch", True)])
def test_negatives_are_gathered_across_workers_unless_the_framework_says_not(framework, objective, gathers):
    assert build_framework(config(framework, objective), distributed=True).objective.gather is gathers
    assert (
        build_framework(
            config(framework, objective, gather_negatives=False), distributed=True
        ).objective.gather
        is False
    )
    moco = config("moco_v2", "cacr_moco_v2", momentum=0.9, queue_size=8, gather_negatives=False)
    assert build_framework(moco, distributed=True).objective.gather is False
    assert build_framework(
        {**moco, "framework": {**moco["framework"], "gather_negatives": True}}, distributed=True
    ).objective.gather


@pytest.mark.parametrize(("key", "value"), [("trainer.precision", "fp8"), ("framework.forward", "split")])
def test_unknown_precision_or_forward_is_refused_naming_the_key(tmp_path, key, value) -> None:
    cfg = composed("experiment=smoke", f"{key}={value}", f"trainer.storage_path={tmp_path}")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_config(cfg)


def _fp16_trainer(tmp_path) -> Pretrainer:
    cfg = composed("experiment=smoke", "trainer.precision=fp16", f"trainer.storage_path={tmp_path}")
    run = {"lr": 0.1, "num_views": 3, "mean": [0.5] * 3, "std": [0.25] * 3}
    return Pretrainer(cfg, run)


def _params(t: Pretrainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in t.framework.online.parameters()]


def _changed(before: list[torch.Tensor], t: Pretrainer) -> bool:
    return any(not torch.equal(a, p) for a, p in zip(before, t.framework.online.parameters(), strict=True))


def test_fp16_steps_through_a_grad_scaler_that_skips_overflowing_steps_and_is_checkpointed(tmp_path) -> None:
    t = _fp16_trainer(tmp_path)
    assert t.fp16 and t.scaler.is_enabled()
    x = views(B=4, V=3, seed=2)
    for _ in range(30):  # a step whose scaled gradients overflow fp16 is skipped and halves the scale
        before, scale = _params(t), t.scaler.get_scale() if t.step else 2.0**16
        loss, _, finite = t.forward_backward(x)
        assert finite and torch.isfinite(loss)
        t.optimizer_step()
        if _changed(before, t):
            assert t.scaler.get_scale() == scale  # applied: the scale stays (grows after 2000 good steps)
            break
        assert t.scaler.get_scale() == scale / 2
    else:
        pytest.fail("no fp16 step was applied")

    t.scaler.update(new_scale=2.0**126)  # now the scaled gradients overflow float32 as well
    held = _params(t)
    t.forward_backward(x)
    t.optimizer_step()
    assert not _changed(held, t)
    assert t.scaler.get_scale() == 2.0**125  # skipped, and the scale halved

    other = _fp16_trainer(tmp_path)
    other.restore(t.state())
    assert other.scaler.get_scale() == 2.0**125


def test_channels_last_trains_on_five_dimensional_view_batches(tmp_path) -> None:
    cfg = composed("experiment=smoke", "trainer.channels_last=true", f"trainer.storage_path={tmp_path}")
    t = Pretrainer(cfg, {"lr": 0.1, "num_views": 3, "mean": [0.5] * 3, "std": [0.25] * 3})
    seen = []
    t.framework.online.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    loss, _, finite = t.forward_backward(views(B=4, V=3, seed=3))  # [B, V, 3, S, S]: was a RuntimeError
    assert finite and torch.isfinite(loss) and len(seen) == 3  # per view
    assert all(x.is_contiguous(memory_format=torch.channels_last) and x.ndim == 4 for x in seen)


@pytest.mark.parametrize(
    ("setting", "model", "on_gpu", "expected"),
    [
        ("auto", "small_alexnet", False, True),  # oneDNN's convolutions are faster channels-last on CPU
        ("auto", "resnet18", False, True),
        ("auto", "vit_s16", False, False),
        ("auto", "vit_s16", True, True),
        (False, "small_alexnet", True, False),
        (True, "vit_s16", False, True),
    ],
)
def test_channels_last_auto_is_on_for_gpus_and_for_convolutional_backbones_on_cpu(
    setting, model, on_gpu, expected
) -> None:
    assert channels_last_for(setting, model, on_gpu) is expected


def test_the_default_cpu_run_trains_channels_last_with_the_float64_loss_and_gradients(tmp_path) -> None:
    run = {"lr": 0.1, "num_views": 3, "mean": [0.5] * 3, "std": [0.25] * 3}
    results = {}
    for setting in ("auto", "float64"):
        layout = "false" if setting == "float64" else setting
        cfg = composed(
            "experiment=smoke", f"trainer.channels_last={layout}", f"trainer.storage_path={tmp_path}"
        )
        t = Pretrainer(cfg, run)
        x = views(B=4, V=3, seed=3)
        if setting == "float64":  # the reference: the same weights in float64, the usual layout
            t.framework.double()
            x = x.double()
        conv = next(m for m in t.framework.online.modules() if isinstance(m, torch.nn.Conv2d))
        loss, _, _ = t.forward_backward(x)
        grads = [p.grad.double().flatten() for p in t.framework.online.parameters() if p.grad is not None]
        layout_of = (t.channels_last, conv.weight.is_contiguous(memory_format=torch.channels_last))
        results[setting] = (layout_of, loss.double(), torch.cat(grads))
    assert results["auto"][0] == (True, True) and results["float64"][0] == (False, False)
    torch.testing.assert_close(results["auto"][1], results["float64"][1], rtol=1e-5, atol=1e-6)
    # float32 rounding can move a ReLU input across zero (one element in this batch does), which
    # shifts the gradients below it by ~0.5 %; a layout mistake would be of the order of 100 %
    error = (results["auto"][2] - results["float64"][2]).norm() / results["float64"][2].norm()
    assert error < 2e-2
