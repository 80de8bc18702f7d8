"""Evaluation without Ray: protocols, the probe, crops, the imbalance breakdown, results files, export."""

from __future__ import annotations

import json
import math
import pathlib
import pickle
import struct

import numpy as np
import pytest
import torch
import torchvision
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from pipelines.data.augment import crop_boxes as augment_crop_boxes
from pipelines.evaluation import breakdown as bd
from pipelines.evaluation import linear as linear_mod
from pipelines.evaluation.crops import random_resized_crop_flip
from pipelines.evaluation.export import load_state, to_detectron2, torchvision_model, write_detectron2
from pipelines.evaluation.judge import Judge
from pipelines.evaluation.linear import cached_batches, final_numbers, split_validation, train_linear_probe
from pipelines.evaluation.protocols import Protocol, from_config
from pipelines.evaluation.report import results_markdown, write_results
from pipelines.models.backbones import build_backbone

ROOT = pathlib.Path(__file__).resolve().parents[3]


def protocol_file(name: str) -> dict:
    """The shipped protocol as Hydra composes it (the file over its group's schema)."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("linear_probe", overrides=[f"eval/protocol={name}"])
    return OmegaConf.to_container(cfg.eval.protocol, resolve=True)


# ------------------------------------------------------------------ protocols
def test_shipped_protocols_carry_the_spec_numbers() -> None:
    small, v2, v3 = (from_config(protocol_file(n)) for n in ("small_scale", "moco_v2", "moco_v3"))
    assert (small.optimizer, small.lr, small.betas, small.batch_size, small.epochs) == (
        "adam",
        1e-3,
        (0.5, 0.999),
        128,
        100,
    )
    assert (small.milestones, small.gamma, small.crop_scale, small.augment) == (
        (60, 80),
        0.2,
        (0.2, 1.0),
        True,
    )
    assert (v2.optimizer, v2.lr, v2.momentum, v2.weight_decay, v2.batch_size, v2.epochs) == (
        "sgd",
        30.0,
        0.9,
        0.0,
        256,
        100,
    )
    assert (v2.milestones, v2.gamma, v2.init_std) == ((60, 80), 0.1, 0.01)
    assert (v3.schedule, v3.epochs, v3.batch_size) == ("cosine", 90, 1024)
    assert v3.lr == pytest.approx(0.1 * 1024 / 256)


def test_learning_rate_schedules_match_closed_forms() -> None:
    v2 = from_config(protocol_file("moco_v2"))
    assert [v2.lr_at(e) for e in (0, 59, 60, 79, 80, 99)] == pytest.approx([30, 30, 3, 3, 0.3, 0.3])
    v3 = from_config(protocol_file("moco_v3"))
    for e in (0, 30, 45, 89):
        assert v3.lr_at(e) == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * e / 90)))


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("epochs", 0, "eval.protocol.epochs"),
        ("optimizer", "lbfgs", "eval.protocol.optimizer"),
        ("milestones", [60, 120], "eval.protocol.milestones"),
        ("val_fraction", 1.0, "eval.protocol.val_fraction"),
        ("crop_scale", [0.5, 0.2], "eval.protocol.crop_scale"),
        ("lr", -1, "eval.protocol.lr"),
    ],
)
def test_a_bad_protocol_names_its_key(key, value, words) -> None:
    cfg = {**protocol_file("small_scale"), key: value}
    with pytest.raises(ValueError, match=words.replace(".", r"\.")):
        from_config(cfg)


# ------------------------------------------------------------------ the probe
def _blobs(n: int, dim: int, classes: int, seed: int, spread: float = 4.0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=gen) * spread
    y = torch.randint(0, classes, (n,), generator=gen)
    return centres[y] + torch.randn(n, dim, generator=gen), y


@pytest.mark.parametrize("name", ["small_scale", "moco_v2", "moco_v3"])
def test_probe_separates_separable_features_and_stays_at_chance_on_random_labels(name) -> None:
    proto = Protocol(
        **{**from_config(protocol_file(name)).__dict__, "epochs": 12, "milestones": (8, 10), "batch_size": 64}
    )
    x, y = _blobs(3000, 32, 5, seed=0)
    res = train_linear_probe(x[:2500], y[:2500], x[2500:], y[2500:], 5, proto)
    assert res["final_top1"] > 98 and res["best_top1"] >= res["final_top1"]
    assert (
        len(res["history"]["test"]) == 12
        and res["history"]["test"][res["best_epoch"] - 1] == res["best_top1"]
    )
    expected = 100 * float((res["test_predictions"] == y[2500:]).float().mean())
    assert res["final_top1"] == pytest.approx(expected)
    noise = torch.randn(3000, 32, generator=torch.Generator().manual_seed(1))
    random_labels = torch.randint(0, 5, (3000,), generator=torch.Generator().manual_seed(2))
    rand = train_linear_probe(
        noise[:2500], random_labels[:2500], noise[2500:], random_labels[2500:], 5, proto
    )
    assert 12 < rand["final_top1"] < 28  # chance is 20 %


def test_validation_split_is_per_class_and_selects_the_epoch_on_val() -> None:
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 1)
    held = split_validation(y, 0.1, seed=3)
    assert [int(held[y == c].sum()) for c in range(3)] == [5, 3, 0]
    x, labels = _blobs(2000, 16, 4, seed=5, spread=0.6)  # overlapping: accuracy varies over epochs
    proto = from_config(
        {
            "name": "t",
            "optimizer": "sgd",
            "lr": 0.5,
            "batch_size": 64,
            "epochs": 8,
            "val_fraction": 0.2,
            "augment": False,
        }
    )
    res = train_linear_probe(x[:1500], labels[:1500], x[1500:], labels[1500:], 4, proto, seed=1)
    val, test = res["history"]["val"], res["history"]["test"]
    chosen = max(range(len(val)), key=val.__getitem__)
    assert res["selected_epoch"] == chosen + 1 and res["selected_top1"] == test[chosen]
    assert final_numbers(res)["linear_selected_top1"] == test[chosen]


# ------------------------------------------------------------------ crops
def test_random_resized_crop_flip_takes_torchvisions_boxes_and_mirrors_half() -> None:
    ramp = torch.arange(32.0).view(1, 1, 1, 32).expand(64, 3, 32, 32).contiguous()
    out = random_resized_crop_flip(ramp, (0.2, 1.0), torch.Generator().manual_seed(7))
    rows = out[:, 0, 16]  # each output row is a resampled piece of the ramp
    replay = torch.Generator().manual_seed(7)  # the same draws: a seed for the boxes, then the flips
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=replay)))
    side = np.full(64, 32.0)
    x1, _, x2, _ = torch.from_numpy(augment_crop_boxes(side, side, (0.2, 1.0), (3 / 4, 4 / 3), rng)).T
    assert bool(((x1 >= 0) & (x2 <= 32) & (x2 > x1)).all()) and torch.equal(x1, x1.round())  # whole pixels
    sign = torch.where(torch.rand(64, generator=replay) < 0.5, -1.0, 1.0)
    # output pixel j samples input x = x1 + (j + 1/2) * (x2 - x1) / 32 (mirrored: from x2 down)
    j = torch.arange(32.0)
    start = torch.where(sign > 0, x1, x2)[:, None]
    where = start + sign[:, None] * (j + 0.5) * ((x2 - x1) / 32)[:, None]
    expected = (where - 0.5).clamp(0, 31)  # the ramp's value there (bilinear is exact on a ramp)
    assert torch.allclose(rows, expected.float(), atol=1e-4)
    slopes = rows[:, -1] - rows[:, 0]
    assert 16 < int((slopes < 0).sum()) < 48  # about half mirrored
    again = random_resized_crop_flip(ramp, (0.2, 1.0), torch.Generator().manual_seed(7))
    assert torch.equal(out, again)
    const = torch.full((8, 3, 32, 32), 5.0)
    assert torch.allclose(random_resized_crop_flip(const, (0.2, 1.0), torch.Generator()), const)


# ------------------------------------------------------------------ imbalance breakdown
def test_breakdown_equals_hand_computed_values() -> None:
    counts = [500, 150, 100, 20, 19, 0]  # many: >100 -> classes 0, 1; medium: 20..100 -> 2, 3; few: 4, 5
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 4, 4, 5, 5, 5, 5])
    preds = np.array([0, 0, 0, 1, 1, 0, 2, 0, 3, 0, 0, 4, 4, 1, 1, 1, 5])
    out = bd.breakdown(preds, labels, counts)
    assert out["per_class"] == pytest.approx([75.0, 50.0, 50.0, 100 / 3, 100.0, 25.0])
    assert out["shots"]["many"]["top1"] == pytest.approx((75 + 50) / 2)
    assert out["shots"]["medium"]["top1"] == pytest.approx((50 + 100 / 3) / 2)
    assert out["shots"]["few"]["top1"] == pytest.approx((100 + 25) / 2)
    assert [out["shots"][k]["classes"] for k in ("many", "medium", "few")] == [2, 2, 2]
    assert [out["shots"][k]["untested"] for k in ("many", "medium", "few")] == [0, 0, 0]
    untested = bd.shot_groups([75.0, None, 50.0, None, 100.0, None], counts)  # 3 classes without test rows
    assert [(g["classes"], g["untested"]) for g in untested.values()] == [(2, 1), (2, 1), (2, 1)]
    assert untested["few"]["top1"] == 100.0
    assert "blocks_of_10" not in out
    custom = bd.shot_groups(out["per_class"], counts, many=200, few=100)
    assert custom["many"]["top1"] == 75.0 and custom["few"]["top1"] == pytest.approx((100 / 3 + 100 + 25) / 3)


def test_cifar100_blocks_of_ten_and_classes_without_test_images() -> None:
    per_class = [float(c) for c in range(100)]
    per_class[95] = None
    blocks = bd.block_averages(per_class)
    assert blocks[:2] == [4.5, 14.5]
    assert blocks[9] == pytest.approx(np.mean([90, 91, 92, 93, 94, 96, 97, 98, 99]))
    labels = np.repeat(np.arange(100), 2)
    out = bd.breakdown(labels, labels, [500] * 50 + [5] * 50)
    assert out["blocks_of_10"] == [100.0] * 10
    assert bd.per_class_accuracy(np.array([0]), np.array([0]), 2) == [100.0, None]
    assert bd.is_imbalanced([500, 0]) and bd.is_imbalanced([5000, 500]) and not bd.is_imbalanced([1000, 999])


# ------------------------------------------------------------------ results files
def _results(counts: list[int]) -> dict:
    judged = {
        "knn_top1": 41.5,
        "knn_k": 200,
        "knn_bank": 150,
        "knn_top1_at_k": {"10": 44.25, "20": 43.0, "100": 42.0, "200": 41.5},
        "linear": {
            "protocol": "small_scale",
            "augment": False,
            "epochs": 60,
            "final_top1": 47.1,
            "best_top1": 47.6,
            "best_epoch": 50,
        },
        "breakdown": bd.breakdown(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), counts),
    }
    rand = {"knn_top1": 34.15, "linear": {**judged["linear"], "final_top1": 34.9, "best_top1": 36.55}}
    return {
        "pretrained": judged,
        "random_init": rand,
        "classes": ["cat", "dog", "eel"],
        "train_counts": counts,
        "objective": "cacr_inbatch (K=4)",
        "epochs": 2,
        "steps": 8,
    }


def test_results_markdown_tables_hold_the_numbers() -> None:
    md = results_markdown(_results([500, 50, 5]), "run x")
    assert "| pretrained | 41.50 | 47.10 | 47.60 | – |" in md
    assert "| random init (BatchNorm recomputed) | 34.15 | 34.90 | 36.55 | – |" in md
    assert "| pretrained | 100.00 | 100.00 | 50.00 |" in md  # many / medium / few: one class each
    assert (
        "| encoder | many (> 100 images, 1 class) | medium (20..100 images, 1 class) "
        "| few (< 20 images, 1 class) |" in md
    )
    res = _results([500, 50, 5, 3])  # a fourth class without any test image: few, left out of its mean
    res["pretrained"]["breakdown"] = bd.breakdown(
        np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), [500, 50, 5, 3]
    )
    res["classes"] = ["cat", "dog", "eel", "fox"]
    assert "few (< 20 images, 2 classes, 1 without test images) |" in results_markdown(res, "run v")
    assert "| eel | 5 | 50.00 |" in md
    assert md.count("Top-1 of each encoder's linear probe at its final epoch.") == 2  # shots, per class
    res = _results([500, 50, 5])
    res["pretrained"]["breakdown_source"] = "knn"
    res["random_init"] = {
        "knn_top1": 30.0,
        "breakdown": res["pretrained"]["breakdown"],
        "breakdown_source": "knn",
    }
    assert "Top-1 of the kNN classifier (no linear probe ran)." in results_markdown(res, "run k")
    assert "| encoder | k = 10 | k = 20 | k = 100 | k = 200 |" in md
    assert "k = 200; a k above the bank (150 images) votes with all of it" in md
    assert "| pretrained | 44.25 | 43.00 | 42.00 | 41.50 |" in md
    balanced = results_markdown(_results([50, 50, 50]), "run y")
    assert "Many / medium / few" not in balanced and "| dog | 50 | 100.00 |" in balanced


def test_each_probe_is_described_as_it_ran_and_best_names_the_split_it_picked_on() -> None:
    """A later augmented probe relabelled the run's own cached-feature rows; 'on test' was fixed."""
    res = _results([50, 50, 50])
    where = {"root": "/data/x", "train_split": "train", "eval_split": "val", "classes": 3}
    res["pretrained"]["judged_on"] = res["random_init"]["judged_on"] = where
    later = {**res["pretrained"]["linear"], "augment": True, "epochs": 100}
    res["linear_probes"] = {"small_scale": {"knn_top1": 41.5, "linear": later, "judged_on": where}}
    md = results_markdown(res, "run z")
    assert (
        "| encoder | kNN top-1 | linear top-1, final epoch | best over epochs (on val) | selected on val |"
        in md
    )
    assert (
        "Probe `small_scale` (pretrained, random init (BatchNorm recomputed)): 60 epochs on cached "
        "centre-crop features." in md
    )
    assert (
        "Probe `small_scale` (pretrained, linear_probe.py small_scale): 100 epochs on random-resized crops"
        in md
    )
    assert "'Best over epochs' picks the epoch on the val split" in md
    one = results_markdown(_results([50, 50, 50]), "run w")  # one way of probing: no row names
    assert "Probe `small_scale`: 60 epochs on cached centre-crop features." in one
    assert "best over epochs (on the evaluation split)" in one  # no judged_on recorded


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_write_results_makes_json_markdown_png_and_a_tensorboard_image(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = [
        {"step": s, "epoch": s // 4, "loss/total": 1.0 / s, "loss/attraction": 0.5 / s} for s in range(1, 9)
    ]
    rows += [{"step": 4, "epoch": 0, "epoch/knn_top1": 30.0}, {"step": 8, "epoch": 1, "epoch/knn_top1": 35.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths = write_results(tmp_path, _results([500, 50, 5]), "imbalanced", steps_per_epoch=4)
    assert json.loads(paths["json"].read_text())["pretrained"]["knn_top1"] == 41.5
    wide = _png_size(paths["png"])
    write_results(tmp_path, _results([50, 50, 50]), "balanced", steps_per_epoch=4)
    narrow = _png_size(paths["png"])
    assert wide[0] > narrow[0] * 1.3  # the per-class panel only for an imbalanced run
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    assert "report" in acc.Tags()["images"]


def test_a_run_shorter_than_its_logging_interval_still_draws_its_loss() -> None:
    from pipelines.evaluation.report import report_figure

    one_epoch = [{"step": 3, "epoch": 0, "epoch/loss_mean": 5.25, "epoch/knn_top1": 20.0}]  # 3 steps < 20
    fig = report_figure(_results([50, 50, 50]), one_epoch, steps_per_epoch=3, title="short")
    (line,) = fig.axes[0].get_lines()
    assert line.get_xydata().tolist() == [[1.0, 5.25]] and line.get_marker() == "o"
    assert line.get_label() == "total (epoch mean)"
    logged = [{"step": s, "epoch": 0, "loss/total": 4.0 - s, "loss/attraction": 1.0} for s in (2, 4)]
    fig = report_figure(_results([50, 50, 50]), logged + one_epoch, steps_per_epoch=4, title="logged")
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    assert set(lines) == {"total", "attraction"}  # the per-step logs, not the epoch mean
    total = lines["total"]
    assert total.get_xydata().tolist() == [[0.5, 2.0], [1.0, 0.0]] and total.get_marker() == "o"
    epochs = [{"step": 3 * (e + 1), "epoch": e, "epoch/loss_mean": 5.0 - e} for e in range(4)]
    fig = report_figure(_results([50, 50, 50]), logged + epochs, steps_per_epoch=3, title="4 epochs")
    (line,) = fig.axes[0].get_lines()  # 2 logged steps over 4 epochs: the 4 epoch means instead
    assert line.get_xydata().tolist() == [[1.0, 5.0], [2.0, 4.0], [3.0, 3.0], [4.0, 2.0]]


# ------------------------------------------------------------------ export
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_backbone_loads_strictly_into_torchvision_and_gives_the_same_features(name, tmp_path) -> None:
    torch.manual_seed(0)
    ours = build_backbone(name, image_size=64).eval()
    torch.save(ours.state_dict(), tmp_path / "backbone.pt")
    state = load_state(tmp_path / "backbone.pt")
    reference = getattr(torchvision.models, name)()
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    clean = torchvision_model(name)
    clean.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(clean.eval()(x), ours(x), atol=1e-5)


def test_vit_backbone_loads_strictly_into_torchvision_vit_b_16() -> None:
    torch.manual_seed(0)
    ours = build_backbone("vit_b16", image_size=32).eval()
    reference = torchvision.models.vit_b_16(image_size=32)
    missing, unexpected = reference.load_state_dict(ours.state_dict(), strict=False)
    assert sorted(missing) == ["heads.head.bias", "heads.head.weight"] and not unexpected
    reference.heads = nn.Identity()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(reference.eval()(x), ours(x), atol=1e-5)


def _detectron2_resnet50_names() -> dict[str, tuple[int, ...]]:
    """detectron2's ResNet-50 parameter and buffer names with shapes, written from its architecture."""
    norm = ("weight", "bias", "running_mean", "running_var")
    out = {"stem.conv1.weight": (64, 3, 7, 7), **{f"stem.conv1.norm.{k}": (64,) for k in norm}}
    cin = 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True), start=2):
        cout = width * 4
        for b in range(blocks):
            p = f"res{stage}.{b}"
            first_in = cin if b == 0 else cout
            shapes = {
                "conv1": (width, first_in, 1, 1),
                "conv2": (width, width, 3, 3),
                "conv3": (cout, width, 1, 1),
            }
            if b == 0:
                shapes["shortcut"] = (cout, cin, 1, 1)
            for conv, shape in shapes.items():
                out[f"{p}.{conv}.weight"] = shape
                out.update({f"{p}.{conv}.norm.{k}": (shape[0],) for k in norm})
        cin = cout
    return out


def test_detectron2_export_uses_detectron2_names_and_keeps_the_values(tmp_path) -> None:
    torch.manual_seed(0)
    state = build_backbone("resnet50", image_size=224).state_dict()
    converted = to_detectron2(state)
    expected = _detectron2_resnet50_names()
    assert {k: tuple(v.shape) for k, v in converted["model"].items()} == expected
    assert np.array_equal(
        converted["model"]["res3.0.shortcut.norm.running_var"],
        state["layer2.0.downsample.1.running_var"].numpy(),
    )
    assert np.array_equal(converted["model"]["stem.conv1.norm.weight"], state["bn1.weight"].numpy())
    path = write_detectron2(state, tmp_path / "r50.pkl")
    with path.open("rb") as f:
        assert pickle.load(f)["matching_heuristics"] is True
    with pytest.raises(ValueError, match="ResNet"):
        to_detectron2(build_backbone("small_alexnet", image_size=32).state_dict())


def test_a_tampered_weights_file_fails_with_a_clear_error(tmp_path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    path = tmp_path / "backbone.pt"
    torch.save({"w": torch.zeros(1), "evil": Evil()}, path)
    with pytest.raises(ValueError, match="refused to load"):
        load_state(path)
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="refused to load"):
        load_state(path)


# ------------------------------------------------------------------ the judge on in-memory batches
def test_judge_runs_knn_probe_and_breakdown_on_batches() -> None:
    torch.manual_seed(0)
    images, labels = torch.zeros(120, 3, 8, 8, dtype=torch.uint8), torch.arange(120) % 3
    for c in range(3):
        images[labels == c, c] = 200  # class c lights channel c
    batches = {
        "bank": [{"views": images[i : i + 40], "label": labels[i : i + 40]} for i in range(0, 120, 40)],
        "eval": [{"views": images[:30], "label": labels[:30]}],
    }
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(192, 16))
    judge = Judge(
        batches.__getitem__,
        3,
        torch.zeros(3),
        torch.ones(3),
        torch.device("cpu"),
        [100, 10, 1],
        {"knn_k": 5, "knn_temperature": 0.1, "knn_report_k": [500, 1]},
    )
    proto = from_config(
        {
            "name": "t",
            "optimizer": "adam",
            "lr": 1e-2,
            "batch_size": 32,
            "epochs": 20,
            "crop_scale": [0.5, 1.0],
        }
    )
    seen: list[int] = []
    out = judge.judge(backbone, proto, progress=lambda e, accs: seen.append(e))
    assert out["knn_top1"] == 100.0 and out["linear"]["final_top1"] == 100.0
    at_k = out["knn_top1_at_k"]  # each k against a float64 reference: test_training_parts
    assert out["knn_k"] == 5 and list(at_k) == ["1", "5", "500"] and at_k["1"] == at_k["5"] == 100.0
    assert out["knn_bank"] == 120
    assert out["breakdown"]["per_class"] == [100.0, 100.0, 100.0] and out["breakdown_source"] == "linear"
    assert seen == list(range(1, 21))


def test_judge_given_the_features_of_the_same_weights_reads_no_stream_and_judges_the_same() -> None:
    torch.manual_seed(0)
    images, labels = torch.randint(0, 256, (90, 3, 8, 8), dtype=torch.uint8), torch.arange(90) % 3
    streams = {
        "bank": [{"views": images[:60], "label": labels[:60]}],
        "eval": [{"views": images[60:], "label": labels[60:]}],
    }
    opened: list[str] = []

    def batches(name: str):
        opened.append(name)
        return streams[name]

    judge = Judge(batches, 3, torch.zeros(3), torch.ones(3), torch.device("cpu"), [30, 30, 30], {"knn_k": 5})
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(192, 16))
    proto = from_config(
        {"name": "t", "optimizer": "adam", "lr": 1e-2, "batch_size": 16, "epochs": 3}
    ).cached()
    fresh = judge.judge(backbone, proto)
    assert opened == ["bank", "eval"]
    feats = judge.features(backbone)
    opened.clear()
    given = judge.judge(backbone, proto, feats=feats)
    assert opened == []  # the kNN and the probe on cached features use the given ones only
    assert given == fresh


def test_export_command_writes_both_formats_and_refuses_bad_input(tmp_path, capsys) -> None:
    from pipelines.export_backbone import main

    torch.manual_seed(0)
    state = build_backbone("resnet50", image_size=224).state_dict()
    source = str(tmp_path / "backbone.pt")
    torch.save(state, source)

    def export(to: str, out: str, model: str = "resnet50") -> int:
        return main([source, "--model", model, "--to", to, "--out", str(tmp_path / out)])

    assert export("torchvision", "tv.pth") == 0
    reference = torchvision.models.resnet50()
    reference.fc = nn.Identity()
    reference.load_state_dict(torch.load(tmp_path / "tv.pth", weights_only=True), strict=True)
    assert export("detectron2", "d2.pkl") == 0
    with (tmp_path / "d2.pkl").open("rb") as f:
        assert set(pickle.load(f)["model"]) == set(_detectron2_resnet50_names())
    assert main([source, "--to", "torchvision", "--out", str(tmp_path / "x")]) == 2
    assert "--model" in capsys.readouterr().err
    assert export("torchvision", "x", model="resnet18") == 2  # resnet50 weights do not fit resnet18
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{source} does not fit torchvision's resnet18 (--model)" in err
    assert "unexpected ['layer1.0.bn3." in err  # the first keys that differ, not torch's whole list

    assert export("torchvision", "x", model="resnet19") == 2  # a typo: the valid names listed
    assert "use one of resnet18, resnet50, vit_s16" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    assert export("torchvision", "folder") == 2
    assert f"--out {tmp_path / 'folder'} is a folder" in capsys.readouterr().err
    assert main([source, "--model", "resnet50", "--to", "torchvision", "--out", source]) == 2
    assert "is the file being exported" in capsys.readouterr().err
    assert torch.load(source, weights_only=True).keys() == state.keys()  # the input is untouched
    assert (
        export("torchvision", "tv.pth") == 0 and f"replacing {tmp_path / 'tv.pth'}" in capsys.readouterr().out
    )


def test_export_from_a_run_uses_its_image_size_and_refuses_a_scaled_width(tmp_path, capsys) -> None:

    from pipelines.core.checkpoints import write_checkpoint
    from pipelines.export_backbone import main

    run = tmp_path / "vit-run"
    run.mkdir()
    model = {"name": "vit_s16", "image_size": 64, "width": 1.0, "stem": "imagenet"}
    (run / "config.yaml").write_text(yaml.safe_dump({"model": model}))
    state = build_backbone("vit_s16", image_size=64).state_dict()
    write_checkpoint(run / "checkpoint_e0001_s00000010", {"epoch": 1, "step": 10}, state)
    out = main([str(run), "--to", "torchvision", "--out", str(tmp_path / "vit.pth")])
    assert out == 0, capsys.readouterr().err
    reference = torchvision.models.vision_transformer.VisionTransformer(
        image_size=64, patch_size=16, num_layers=12, num_heads=6, hidden_dim=384, mlp_dim=1536
    )
    reference.heads = nn.Identity()
    reference.load_state_dict(torch.load(tmp_path / "vit.pth", weights_only=True), strict=True)
    assert reference.encoder.pos_embedding.shape == (1, 17, 384)  # 4 x 4 patches + the class token
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {**model, "width": 0.5}}))
    assert main([str(run), "--to", "torchvision", "--out", str(tmp_path / "x.pth")]) == 2
    assert "model.width=0.5" in capsys.readouterr().err


def test_probe_eval_starts_from_the_runs_settings_and_takes_only_what_the_command_line_set() -> None:
    from pipelines.probe.setup import probe_eval

    saved = {"knn_k": 50, "few_shot_below": 40, "protocol": {"name": "small_scale", "epochs": 5, "lr": 1.0}}
    composed = {
        "knn_k": 200,
        "few_shot_below": 20,
        "knn_report_k": [10, 20],
        "protocol": {"name": "moco_v2", "epochs": 100, "lr": 30.0},
    }
    assert probe_eval(saved, composed, []) == {**saved, "knn_report_k": [10, 20]}  # new keys from defaults
    changed = probe_eval(saved, composed, ["eval.knn_k=200", "++eval.protocol.epochs=100"])
    assert changed["knn_k"] == 200 and changed["few_shot_below"] == 40
    assert changed["protocol"] == {"name": "small_scale", "epochs": 100, "lr": 1.0}
    assert probe_eval(saved, composed, ["eval/protocol=moco_v2"])["protocol"] == composed["protocol"]
    assert probe_eval(None, composed, ["run=x"]) == composed
    assert "few_shot_below" not in probe_eval(saved, composed, ["~eval.few_shot_below"])


def test_probe_eval_keeps_the_runs_protocol_whole_with_the_shipped_protocols() -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from pipelines.evaluation.protocols import from_config
    from pipelines.probe.setup import probe_eval

    configs = pathlib.Path(__file__).resolve().parents[3] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        command = ["eval.protocol.epochs=3"]  # on top of the default protocol, small_scale
        default = OmegaConf.to_container(compose("linear_probe", command).eval, resolve=True)
        run = OmegaConf.to_container(compose("linear_probe", ["eval/protocol=moco_v3"]).eval, resolve=True)
    assert run["protocol"]["lr"] is None and default["protocol"]["lr"] == 1e-3  # a key-wise merge mixes these
    ev = probe_eval(run, default, command)
    assert ev["protocol"] == {**run["protocol"], "epochs": 3}
    assert from_config(ev["protocol"]).lr == pytest.approx(0.1 * run["protocol"]["batch_size"] / 256)


def test_the_probe_table_of_another_dataset_leaves_out_the_runs_own_baseline() -> None:
    from pipelines.probe.run import probe_table

    judged = {
        "knn_top1": 50.0,
        "linear": {"final_top1": 60.0, "best_top1": 61.0},
        "breakdown": bd.breakdown(np.array([0, 1, 2]), np.array([0, 1, 1]), [500, 50, 5]),
        "train_counts": [500, 50, 5],
        "judged_on": {"other_dataset": True},
    }
    results = {
        "random_init": {"knn_top1": 30.0},
        "train_counts": [10, 10, 10],
        "linear_probes": {"small_scale on in1k": judged},
    }
    table = probe_table(results, "small_scale on in1k", "/runs/x")
    assert "random init" not in table and "60.00" in table
    assert "many / medium / few-shot top-1" in table  # from the other dataset's counts, not the run's
    own = probe_table({**results, "linear_probes": {"s": {**judged, "judged_on": {}}}}, "s", "/runs/x")
    assert "random init (from the run's own evaluation)" in own
    cached = {"protocol": "small_scale", "epochs": 60, "augment": False, "final_top1": 40.0}
    augmented = {**judged, "judged_on": {}, "linear": {**cached, "epochs": 100, "augment": True}}
    results = {
        **results,
        "random_init": {"knn_top1": 30.0, "linear": cached},
        "linear_probes": {"a": augmented},
    }
    table = probe_table(results, "a", "/runs/x")  # the baseline was probed another way: said so
    assert "random init (from the run's own evaluation: probed by small_scale, 60 epochs on cached" in table
    same = {**augmented, "linear": cached}
    assert "own evaluation)" in probe_table({**results, "linear_probes": {"a": same}}, "a", "/runs/x")


def test_probes_on_two_folders_of_the_same_name_get_their_own_entries() -> None:
    from pipelines.probe.setup import probe_key

    a, b = {"root": "/data/a/shards"}, {"root": "/data/b/shards/"}
    assert probe_key("moco_v2", a, other=False) == "moco_v2"
    assert probe_key("moco_v2", a, other=True) == "moco_v2 on shards"
    probes = {"moco_v2 on shards": {"judged_on": {"root": "/data/a/shards"}}}
    assert probe_key("moco_v2", a, other=True, probes=probes) == "moco_v2 on shards"  # the same: replaced
    other = probe_key("moco_v2", b, other=True, probes=probes)
    third = probe_key("moco_v2", {"root": "/x/shards"}, True, probes)
    assert other.startswith("moco_v2 on shards (") and third.startswith("moco_v2 on shards (")
    assert other != third


def test_a_probe_with_other_settings_or_checkpoint_gets_its_own_entry() -> None:
    """A second probe of a run with other settings replaced the first one's entry."""
    from pipelines.probe.setup import probe_key, protocol_changes

    assert protocol_changes({"name": "small_scale", "optimizer": "adam", "lr": 1e-3}) == (
        "betas [0.9, 0.999], batch_size 256, milestones [], gamma 0.1, crop_scale [0.08, 1]"
    )  # the schema's defaults, not small_scale's: every difference named
    shipped = {
        "name": "small_scale",
        "optimizer": "adam",
        "lr": 1e-3,
        "betas": [0.5, 0.999],
        "batch_size": 128,
        "milestones": [60, 80],
        "gamma": 0.2,
        "crop_scale": [0.2, 1.0],
    }
    assert protocol_changes(shipped) == ""
    demo = {**shipped, "epochs": 60, "milestones": [36, 48], "augment": False, "standardize": True}
    changes = protocol_changes(demo)
    assert changes == "epochs 60, milestones [36, 48], standardize true, augment false"
    assert probe_key("small_scale", {"root": "/d/x"}, False, None, changes) == f"small_scale ({changes})"
    assert probe_key("small_scale", {"root": "/d/x"}, True, None, "epochs 3") == "small_scale (epochs 3) on x"
    assert protocol_changes({"name": "my_own", "epochs": 3}) == ""  # no shipped protocol of that name


def test_a_probe_of_an_earlier_checkpoint_is_named_by_it(tmp_path) -> None:
    """` at <checkpoint>` in the entry's name for any checkpoint but the run's latest complete one."""
    from pipelines.core import checkpoints as ckpt
    from pipelines.probe.run import _checkpoint_note, find_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("experiment_name: x\n")
    for epoch, step in ((1, 8), (2, 16)):
        state = {"epoch": epoch, "step": step, "model": {"w": torch.zeros(2)}}
        ckpt.write_checkpoint(run / f"checkpoint_e{epoch:04d}_s{step:08d}", state, {"w": torch.zeros(2)})
    (run / "checkpoint_e0003_s00000024").mkdir()  # torn: no COMPLETE marker, never the latest
    earlier, latest = run / "checkpoint_e0001_s00000008", run / "checkpoint_e0002_s00000016"
    assert find_checkpoint(run) == (run.resolve(), latest.resolve())
    assert _checkpoint_note(run, earlier) == " at checkpoint_e0001_s00000008"
    assert _checkpoint_note(run, latest) == ""  # the latest one is the run's own entry


@pytest.mark.parametrize("n", [1, 127, 128, 1000, 8193])
def test_cached_batches_hand_out_each_epochs_seeded_permutation_in_order(n: int, monkeypatch) -> None:
    monkeypatch.setattr(linear_mod, "GATHER_BATCHES", 3)  # several gathers even for small n
    x = torch.arange(n * 4, dtype=torch.float32).reshape(n, 4)
    y = torch.arange(n)
    batches = cached_batches(x, y, 128, seed=5)
    for epoch in (0, 1):
        got = list(batches(epoch))
        order = np.asarray(torch.randperm(n, generator=torch.Generator().manual_seed(5 * 100_003 + epoch)))
        assert [len(b) for _, b in got] == [min(128, n - s) for s in range(0, n, 128)]
        np.testing.assert_array_equal(np.concatenate([b.numpy() for _, b in got]), order)
        np.testing.assert_array_equal(np.concatenate([a.numpy() for a, _ in got]), x.numpy()[order])
