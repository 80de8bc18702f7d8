"""timm exports and official CACR-SSL / MoCo checkpoints, against timm's and torchvision's own models."""

from __future__ import annotations

import pathlib

import pytest
import timm
import torch
import torchvision
from torch import nn

from pipelines.core.errors import ConfigError
from pipelines.evaluation.export import load_state, to_timm
from pipelines.models.backbones import build_backbone
from pipelines.probe.setup import check_backbone

# our model.name -> the timm.create_model call that must take its export (written out, not read from ours)
TIMM_MODELS = {
    "resnet50": ("resnet50", {}),
    "vit_s16": ("vit_small_patch16_224", {}),
    "vit_b16": ("vit_base_patch16_224", {}),
    "vit_s16_moco_v3": ("vit_small_patch16_224", {"num_heads": 12}),  # MoCo-v3's vit_small: 12 heads
}


def perturbed(module: nn.Module, seed: int) -> nn.Module:
    """``module`` with every float tensor of its state moved off its initial value.

    Zero biases, unit LayerNorm weights and fresh BatchNorm statistics would hide a swapped or
    dropped tensor; random values make each one matter.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=gen, dtype=tensor.dtype) * 0.02
            tensor.copy_(tensor.abs() + 0.5 + noise if name.endswith("running_var") else tensor + noise)
    return module


def timm_model(name: str, image_size: int = 224) -> nn.Module:
    timm_name, kwargs = TIMM_MODELS[name]
    if name.startswith("vit") and image_size != 224:
        kwargs = {**kwargs, "img_size": image_size}
    return timm.create_model(timm_name, pretrained=False, num_classes=0, **kwargs)


@pytest.mark.parametrize("name", sorted(TIMM_MODELS))
def test_timm_export_loads_strictly_into_timm_and_gives_the_same_features(name):
    torch.manual_seed(0)
    # at 224 px timm's default model takes the export as it is
    timm_model(name).load_state_dict(
        to_timm(build_backbone(name, image_size=224).state_dict(), name), strict=True
    )
    # features at 64 px (a 4 x 4 patch grid keeps the ViT-B comparison fast), every tensor perturbed
    ours = perturbed(build_backbone(name, image_size=64), seed=1).eval()
    theirs = timm_model(name, 64)
    theirs.load_state_dict(to_timm(ours.state_dict(), name), strict=True)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = ours.double()(x)
        got = theirs.double().eval()(x)
    assert got.shape == expected.shape == (2, ours.feature_dim)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


def test_the_12_head_moco_v3_vit_s_differs_from_timms_6_head_vit_s():
    # the same tensors in timm's default 6-head ViT-S compute other features: the heads are not in the weights
    torch.manual_seed(0)
    ours = perturbed(build_backbone("vit_s16_moco_v3", image_size=64), seed=1).eval().double()
    six = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, img_size=64)
    six.load_state_dict(to_timm(ours.state_dict(), "vit_s16_moco_v3"), strict=True)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        assert (six.double().eval()(x) - ours(x)).abs().max() > 1e-3


def test_export_command_writes_a_timm_state_dict_and_names_the_create_model_call(tmp_path, capsys):
    from pipelines.export_backbone import main

    torch.manual_seed(0)
    state = perturbed(build_backbone("vit_s16_moco_v3", image_size=224), seed=2).state_dict()
    torch.save(state, tmp_path / "backbone.pt")
    args = [str(tmp_path / "backbone.pt"), "--model", "vit_s16_moco_v3", "--to", "timm"]
    assert main([*args, "--out", str(tmp_path / "timm.pth")]) == 0
    assert (
        "timm.create_model('vit_small_patch16_224', num_classes=0, num_heads=12)" in capsys.readouterr().out
    )
    exported = torch.load(tmp_path / "timm.pth", weights_only=True)
    model = timm_model("vit_s16_moco_v3")
    model.load_state_dict(exported, strict=True)
    assert torch.equal(
        exported["blocks.11.attn.qkv.weight"],
        state["encoder.layers.encoder_layer_11.self_attention.in_proj_weight"],
    )
    small = build_backbone("small_alexnet", image_size=32)
    torch.save(small.state_dict(), tmp_path / "alexnet.pt")
    bad = [
        str(tmp_path / "alexnet.pt"),
        "--model",
        "small_alexnet",
        "--to",
        "timm",
        "--out",
        str(tmp_path / "x"),
    ]
    assert main(bad) == 2
    assert "no torchvision counterpart" in capsys.readouterr().err


# ------------------------------------------------------------------ official checkpoints


def sgd_state() -> dict:
    """A real SGD optimizer state (momentum buffers, param groups), as the official checkpoints hold."""
    p = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=1e-4)
    p.sum().backward()
    opt.step()
    return opt.state_dict()


def resnet50_reference() -> nn.Module:
    torch.manual_seed(0)
    return perturbed(torchvision.models.resnet50(), seed=3)


def _mlp_keys(prefix: str, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}fc.0.weight": torch.randn(16, 2048, generator=gen),
        f"{prefix}fc.1.running_mean": torch.randn(16, generator=gen),
        f"{prefix}fc.3.weight": torch.randn(8, 16, generator=gen),
    }


def official_checkpoint(layout: str, encoder: dict[str, torch.Tensor]) -> dict:
    """A checkpoint dict as the official training scripts save it, around ``encoder`` (torchvision names).

    ``moco_v2``: CACR-SSL large-scale / MoCo-v2 (``module.encoder_q`` and ``encoder_k`` with an MLP
    ``fc``, the queue); ``moco_v3``: MoCo-v3 / CACR-SSL ImageNet (``module.base_encoder`` and
    ``momentum_encoder`` with a projector ``fc``, the predictor, the AMP scaler); ``moco_v3_plain``:
    the same without DDP's ``module.``.
    """
    gen = torch.Generator().manual_seed(4)
    backbone = {k: v for k, v in encoder.items() if not k.startswith("fc.")}
    if layout == "moco_v2":
        online, other = "module.encoder_q.", "module.encoder_k."
        extra = {
            "module.queue": torch.randn(8, 32, generator=gen),
            "module.queue_ptr": torch.zeros(1, dtype=torch.long),
        }
    else:
        module = "module." if layout == "moco_v3" else ""
        online, other = f"{module}base_encoder.", f"{module}momentum_encoder."
        extra = {f"{module}predictor.0.weight": torch.randn(16, 8, generator=gen)}
    state = {}
    for prefix in (online, other):
        state.update({prefix + k: v.clone() for k, v in backbone.items()})
        state.update(_mlp_keys(prefix, gen))
    state.update(extra)
    saved = {"epoch": 800, "arch": "resnet50", "state_dict": state, "optimizer": sgd_state()}
    if layout != "moco_v2":
        saved["scaler"] = {
            "scale": 65536.0,
            "growth_factor": 2.0,
            "backoff_factor": 0.5,
            "growth_interval": 2000,
            "_growth_tracker": 7,
        }
    return saved


@pytest.mark.parametrize("layout", ["moco_v2", "moco_v3", "moco_v3_plain"])
def test_an_official_resnet50_checkpoint_loads_as_its_online_encoder_exactly(layout, tmp_path):
    reference = resnet50_reference().state_dict()
    path = tmp_path / "checkpoint_0799.pth.tar"
    torch.save(official_checkpoint(layout, reference), path)
    state = load_state(path)
    expected = {k: v for k, v in reference.items() if not k.startswith("fc.")}
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key
    build_backbone("resnet50", image_size=224).load_state_dict(state, strict=True)
    check_backbone({"model": {"name": "resnet50", "image_size": 224}}, tmp_path, weights=path)


def test_an_official_moco_v3_vit_checkpoint_loads_into_our_moco_v3_vit_with_timms_features(tmp_path):
    torch.manual_seed(0)
    official = perturbed(timm_model("vit_s16_moco_v3", 64), seed=5).eval()
    gen = torch.Generator().manual_seed(6)
    state = {f"module.base_encoder.{k}": v for k, v in official.state_dict().items()}
    state["module.base_encoder.head.0.weight"] = torch.randn(16, 384, generator=gen)  # the projector
    state["module.momentum_encoder.cls_token"] = torch.randn(1, 1, 384, generator=gen)
    path = tmp_path / "vit-s-300ep.pth.tar"
    torch.save({"epoch": 300, "arch": "vit_small", "state_dict": state, "optimizer": sgd_state()}, path)
    ours = build_backbone("vit_s16_moco_v3", image_size=64)
    ours.load_state_dict(load_state(path), strict=True)
    assert torch.equal(ours.conv_proj.weight, official.patch_embed.proj.weight)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours.double().eval()(x), official.double()(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "saved",
    [
        {"state_dict": {"module.encoder.conv1.weight": torch.zeros(1)}, "epoch": 1},  # another prefix
        {"model": {"conv1.weight": torch.zeros(1)}},  # DeiT-style: not an official pretraining checkpoint
        {"state_dict": {}},
        [torch.zeros(1)],
        {"state_dict": {"module.encoder_q.conv1.weight": torch.zeros(1)}, "note": object},  # a pickled class
    ],
)
def test_an_unknown_layout_fails_in_one_line_naming_the_file(saved, tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(saved, path)
    with pytest.raises(ValueError) as err:
        load_state(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message.strip()


def test_the_probe_check_names_an_official_file_that_does_not_fit_the_runs_model(tmp_path):
    path = tmp_path / "r50.pth.tar"
    torch.save(official_checkpoint("moco_v3", resnet50_reference().state_dict()), path)
    with pytest.raises(ConfigError, match=r"r50\.pth\.tar does not fit the run.s model") as err:
        check_backbone({"model": {"name": "resnet18", "image_size": 224}}, tmp_path, weights=path)
    assert "judge it with a run of its model" in str(err.value)


def test_the_probe_takes_a_backbone_file_from_the_command_line(tmp_path):
    from hydra import compose, initialize_config_dir

    from pipelines.probe.run import _weights_file

    root = pathlib.Path(__file__).resolve().parents[3]
    with initialize_config_dir(config_dir=str(root / "configs"), version_base="1.3"):
        cfg = compose("linear_probe", overrides=[f"backbone={tmp_path}/r50.pth.tar"])
    assert cfg.backbone == f"{tmp_path}/r50.pth.tar"
    with pytest.raises(ConfigError, match=r"backbone=.*no such file"):
        _weights_file(cfg.backbone)
    (tmp_path / "r50.pth.tar").write_bytes(b"")
    assert _weights_file(cfg.backbone) == tmp_path / "r50.pth.tar"
    assert _weights_file(None) is None
