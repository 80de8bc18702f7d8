"""The evaluation of a real (tiny) imbalanced pretraining run and `pipelines/linear_probe.py` on it."""

from __future__ import annotations

import copy
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipelines.core.errors import ConfigError
from pipelines.evaluation.export import load_state
from pipelines.probe.run import find_checkpoint, linear_probe, probe_table
from pipelines.training.run import pretrain
from tests.helpers.runs import smoke, watchers

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(900)


def probe_config(run: str, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("linear_probe", overrides=[f"run={run}", *overrides])
    return {**OmegaConf.to_container(cfg, resolve=True), "overrides": list(overrides)}  # as the command does


@pytest.fixture(scope="module")
def imb_run(ray_cluster, tmp_path_factory) -> tuple[Path, dict]:
    """One tiny imbalanced pretraining run for the module: its folder (each test probes its own
    copy) and its results."""
    cfg = smoke(
        tmp_path_factory.mktemp("imb"),
        "trainer.name=imb",
        "trainer.epochs=1",
        "dataset.imbalance.rule=exponential",
        "dataset.imbalance.ratio=50",
        "eval.random_init_baseline=false",
        "eval.few_shot_below=50",
    )
    out = pretrain(cfg)
    return Path(out.run_dir), out.results


def own_copy(run: tuple[Path, dict], tmp_path: Path) -> tuple[Path, dict]:
    """A copy of the module's run folder in ``tmp_path`` and a copy of the run's results."""
    run_dir = tmp_path / run[0].name
    shutil.copytree(run[0], run_dir)
    return run_dir, copy.deepcopy(run[1])


def test_imbalanced_run_reports_shots_and_the_probe_command_adds_its_protocol(
    imb_run, tmp_path, monkeypatch
) -> None:
    run_dir, ran = own_copy(imb_run, tmp_path)
    counts = json.loads((run_dir / "class_counts.json").read_text())["counts"]
    assert max(counts) / min(counts) == pytest.approx(50, rel=0.05)
    shots = ran["pretrained"]["breakdown"]["shots"]
    assert shots["many"]["classes"] == sum(c > 100 for c in counts)
    assert shots["few"]["classes"] == sum(c < 50 for c in counts) >= 2
    per_class = ran["pretrained"]["breakdown"]["per_class"]
    many = [a for a, c in zip(per_class, counts, strict=True) if c > 100]
    assert shots["many"]["top1"] == pytest.approx(sum(many) / len(many))
    md = (run_dir / "results.md").read_text()
    assert "Many / medium / few" in md and "| pretrained |" in md
    width, _ = struct.unpack(">II", (run_dir / "report.png").read_bytes()[16:24])
    assert width > 1500  # three panels: the per-class one is there for an imbalanced run

    # the standalone probe, in this process on the test cluster: the run's own eval settings
    # (few_shot_below=50, a probe without augmentation) with what the command line changes: the
    # small_scale protocol's augmentation (random-resized crops every epoch), 3 epochs, a
    # validation hold-out, k=20
    seen = watchers()
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "1")  # Ray's default in a fresh process
    probe = probe_config(
        str(run_dir),
        "eval.protocol.epochs=3",
        "eval.protocol.milestones=[2]",
        "eval.protocol.val_fraction=0.1",
        "eval.protocol.augment=true",
        "eval.knn_k=20",
    )
    results = linear_probe(probe)
    assert watchers() == seen  # no PreemptionWatcher actor (and no Ray error line about it)
    key = "small_scale (epochs 3, milestones [2], val_fraction 0.1)"  # what differs from the shipped one
    assert results.pop("probe_key") == key
    judged = results["linear_probes"][key]
    assert judged["knn_k"] == 20 and judged["breakdown"]["shots"]["few"]["rule"] == "< 50 images"  # run's
    lin = judged["linear"]
    assert lin["augment"] is True and len(lin["history"]["test"]) == 3 and len(lin["history"]["val"]) == 3
    assert lin["final_top1"] == lin["history"]["test"][-1]
    assert lin["selected_top1"] == lin["history"]["test"][lin["selected_epoch"] - 1]
    assert 10.0 <= judged["knn_top1"] <= 100.0
    assert judged["checkpoint"] == str(find_checkpoint(run_dir)[1])
    assert results["pretrained"] == ran["pretrained"]  # the run's own evaluation is kept
    assert f"pretrained, linear_probe.py {key}" in (run_dir / "results.md").read_text()
    table = probe_table(results, key, str(run_dir))
    assert "many / medium / few-shot top-1" in table and f"{lin['final_top1']:6.2f}" in table

    # the exported backbone is the checkpoint's: same weights in backbone.pt and state.pt
    ckpt_dir = find_checkpoint(run_dir)[1]
    backbone = load_state(ckpt_dir / "backbone.pt")
    state = torch.load(ckpt_dir / "state.pt", weights_only=True)
    online = {
        k.split("backbone.", 1)[1]: v for k, v in state["model"].items() if k.startswith("online.backbone.")
    }
    assert online and all(torch.equal(online[k], backbone[k]) for k in online)


def test_probe_command_refuses_bad_paths_before_ray(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"run=.*no such folder"):
        find_checkpoint(tmp_path / "nope")
    (tmp_path / "config.yaml").write_text("{}\n")
    with pytest.raises(
        ConfigError, match=r"no complete checkpoint yet \(still training, or it failed before"
    ):
        find_checkpoint(tmp_path)
    (tmp_path / "stopped.json").write_text('{"reason": "too many bad images"}')
    with pytest.raises(ConfigError) as stopped:
        find_checkpoint(tmp_path)
    assert str(stopped.value) == (
        f"run={tmp_path}: the run has no complete checkpoint yet (it stopped before its first "
        f"checkpoint (too many bad images; {tmp_path / 'stopped.json'}))"
    )
    proc = subprocess.run(
        [sys.executable, "pipelines/linear_probe.py", f"run={tmp_path / 'nope'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "no such folder" in proc.stderr and "Traceback" not in proc.stderr


def test_the_probe_judges_on_another_dataset_and_refuses_a_backbone_that_does_not_fit(imb_run, tmp_path):
    import yaml

    from pipelines.data.prepare import prepare_dataset
    from tests.helpers import replicas

    run_dir, ran = own_copy(imb_run, tmp_path)
    replicas.imagenet(tmp_path / "in1k-raw")  # 3 classes: 2, 3 and 4 training images, 4 val images
    prepare_dataset("imagenet1k", str(tmp_path / "in1k-raw"), str(tmp_path / "in1k"))
    other = f"eval_dataset.root={tmp_path / 'in1k'}"
    short = ("eval.protocol.epochs=2", "eval.protocol.milestones=[1]")
    results = linear_probe(probe_config(str(run_dir), *short, other))
    key = results.pop("probe_key")
    judged = results["linear_probes"][key]
    assert key == "small_scale (epochs 2, milestones [1], augment false) on in1k"  # the run's augment
    where = {"root": str(tmp_path / "in1k"), "train_split": "train", "eval_split": "val", "classes": 3}
    assert judged["judged_on"] == {**where, "other_dataset": True}
    assert judged["classes"] == sorted(replicas.WNIDS) and judged["train_counts"] == [2, 3, 4]
    assert len(judged["breakdown"]["per_class"]) == 3 and len(judged["linear"]["history"]["test"]) == 2
    assert results["classes"] == ran["classes"]  # the run's own classes and counts stay
    md = (run_dir / "results.md").read_text()
    assert f"linear_probe.py {key}: judged on `{tmp_path / 'in1k'}` (train -> val, 3 classes)" in md
    assert "- pretrained: judged on `" in md and "(train -> test, 10 classes)" in md

    with pytest.raises(ConfigError, match=r"eval_dataset.eval_split"):  # the key of the probe's config
        linear_probe(probe_config(str(run_dir), other, "eval_dataset.eval_split=test"))

    renamed = tmp_path / "renamed"  # dataset_root= is the run's own data moved: other classes are refused
    shutil.copytree(ROOT / "data" / "cifar10-sample", renamed)
    (renamed / "classes.txt").write_text("".join(f"kind {i}\n" for i in range(10)))
    with pytest.raises(ConfigError) as refused:
        linear_probe(probe_config(str(run_dir), f"dataset_root={renamed}"))
    assert str(refused.value).startswith(
        f"dataset.root={renamed} holds other data than run imb trained on: classes [airplane, "
    )
    assert str(refused.value).endswith("pass eval_dataset.root=<its shards>")

    edited = tmp_path / "edited"
    shutil.copytree(run_dir, edited)
    cfg = yaml.safe_load((edited / "config.yaml").read_text())
    cfg["model"]["width"] = 0.25
    (edited / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"backbone.pt does not fit the run's model \(model.name=small"):
        linear_probe(probe_config(str(edited)))
