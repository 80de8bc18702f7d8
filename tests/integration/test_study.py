"""A toy study on the local cluster: 2 presets x 1 seed x 1 epoch, every table cell checked."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipelines.studies.run import run_study

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(900)

TOY = [
    "dataset=cifar10_sample",
    "dataset.max_train_images=256",
    "trainer.num_workers=1",
    "trainer.resources_per_worker={CPU: 0.45}",
    "model.width=0.125",
    "trainer.epochs=1",
    "trainer.batch_size=32",
    "trainer.schedule.name=cosine",
    "trainer.schedule.milestones=[]",
    "eval.knn_bank_size=256",
    "eval.random_init_baseline=false",
    "eval.protocol.epochs=3",
    "eval.protocol.milestones=[]",
    "eval.protocol.augment=false",
]


def test_a_toy_study_runs_each_preset_once_and_tables_its_trials(ray_cluster, tmp_path) -> None:
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        overrides = ["study=small_scale_methods_demo", "study.seeds=[0]", "study.name=toy"]
        cfg = OmegaConf.to_container(
            compose("study", [*overrides, f"tune.storage_path={tmp_path}"]), resolve=True
        )
    cfg["study"].update(overrides=TOY, paper={"CL": {"cifar10": 50.0}})  # 2 presets x 1 seed x 1 epoch
    cfg["tune"]["verbose"] = 0
    out = run_study(cfg)
    assert out.folder == tmp_path / "toy"
    # every cell's value is its one trial's final linear-probe top-1, read from that trial's run
    trials = {}
    for row in csv.DictReader((out.folder / "results.csv").open()):
        assert row["status"] == "completed", row
        results = json.loads((out.folder / "trials" / row["trial"] / "results.json").read_text())
        assert results["epochs"] == 1 and results["objective"].startswith(
            "infonce_inbatch" if row["arm"].startswith("CL") else "cacr_inbatch"
        )
        trials[row["arm"]] = results["pretrained"]["linear"]["final_top1"]
    assert set(trials) == {"CL__cifar10", "CACR_K_4__cifar10"}
    table = {(r["method"], r["part"]): r for r in csv.DictReader(out.files["csv"].open())}
    for method, arm in (("CL", "CL__cifar10"), ("CACR K=4", "CACR_K_4__cifar10")):
        cell = table[(method, "value")]
        assert float(cell["mean"]) == pytest.approx(trials[arm]) and cell["n"] == "1" and cell["std"] == ""
    assert table[("CL", "value")]["paper"] == "50.0" and table[("CACR K=4", "value")]["paper"] == ""
    md = out.files["md"].read_text()
    assert f"| CL | {trials['CL__cifar10']:.2f} (n=1) | 50.00 |" in md
    assert out.files["png"].stat().st_size > 5_000
