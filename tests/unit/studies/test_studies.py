"""Study configs -> searches, and the study table (no Ray)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipelines.core.errors import ConfigError
from pipelines.search.space import arms, trial_overrides, trial_values
from pipelines.studies.spec import as_search, cells
from pipelines.studies.table import Stat, collect, headers, table_rows, write_study

ROOT = Path(__file__).resolve().parents[3]
STUDIES = sorted(p.stem for p in (ROOT / "configs" / "study").glob("*.yaml"))


def study(**changes) -> dict:
    base = {
        "name": "t",
        "metric": "linear_top1",
        "columns": ["cifar10", "cifar100"],
        "rows": {
            "CL": "{column}_cl",
            "K=2": {"experiment": "{column}_cacr_k4", "overrides": ["objective.K=2"]},
            "odd": {"cifar10": "cifar10_hn_cl", "cifar100": "cifar100_au_cl"},
        },
        "seeds": [0, 1, 2],
        "overrides": ["trainer.epochs=1"],
    }
    return {**base, **changes}


def test_cells_expand_templates_spelled_out_columns_and_their_overrides():
    got = [(c.row, c.column, c.experiment, c.overrides, c.arm) for c in cells(study())]
    assert got == [
        ("CL", "cifar10", "cifar10_cl", [], "CL__cifar10"),
        ("CL", "cifar100", "cifar100_cl", [], "CL__cifar100"),
        ("K=2", "cifar10", "cifar10_cacr_k4", ["objective.K=2"], "K_2__cifar10"),
        ("K=2", "cifar100", "cifar100_cacr_k4", ["objective.K=2"], "K_2__cifar100"),
        ("odd", "cifar10", "cifar10_hn_cl", [], "odd__cifar10"),
        ("odd", "cifar100", "cifar100_au_cl", [], "odd__cifar100"),
    ]


def test_a_study_is_a_search_of_one_arm_per_cell_and_a_shared_seed_grid_without_asha():
    search = as_search(study())
    assert search["asha"] is None and search["shared"] == {"trainer.seed": {"grid": [0, 1, 2]}}
    assert [a.name for a in arms(search)] == [c.arm for c in cells(study())]
    config = {"arm": "K_2__cifar100", "trainer.seed": 2}
    assert trial_values(search, config) == {"trainer.seed": 2}
    overrides = trial_overrides(search, config)
    assert overrides[:4] == [
        "experiment=cifar100_cacr_k4",
        "trainer.epochs=1",
        "objective.K=2",
        "trainer.seed=2",
    ]


def test_the_seed_grid_multiplies_the_arms_once():
    from ray import tune  # noqa: F401  (the grid is Tune's)

    from pipelines.search.space import param_space

    space = param_space(as_search(study()))
    assert set(space) == {"arm", "trainer.seed"}
    assert len(space["arm"]["grid_search"]) * len(space["trainer.seed"]["grid_search"]) == 18


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"rows": {}}, "study.rows"),
        ({"seeds": []}, "study.seeds"),
        ({"seeds": [0.5]}, "study.seeds"),
        ({"seeds": [0, 1, 0]}, r"seed\(s\) \[0\] listed twice"),
        ({"metric": "accuracy"}, "study.metric"),
        ({"rows": {"CL": {"cifar10": "cifar10_cl"}}}, "no preset for column 'cifar100'"),
        ({"rows": {"CL": 3}}, "study.rows.CL"),
        ({"rows": {"a b": "{column}_cl", "a-b": "{column}_cl"}}, "same name"),
    ],
)
def test_a_bad_study_names_its_key(changes, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        cells(study(**changes))


def test_stat_mean_and_sample_std_match_closed_forms():
    values = [71.25, 70.5, 72.0]  # mean 71.25; deviations 0, -0.75, 0.75: sample variance 0.5625
    s = Stat(values)
    assert s.mean == pytest.approx(71.25) and s.std == pytest.approx(0.75)
    assert s.text() == "71.25 ± 0.75 (n=3)"
    assert Stat([5.0]).std is None and Stat([5.0]).text() == "5.00 (n=1)" and Stat().text() == "-"


def _results(top1: float, knn: float, shots: tuple[float, float, float | None]) -> dict:
    groups = {g: {"top1": v} for g, v in zip(("many", "medium", "few"), shots, strict=True)}
    return {"pretrained": {"knn_top1": knn, "linear": {"final_top1": top1}, "breakdown": {"shots": groups}}}


def test_the_table_averages_each_cells_completed_trials_and_shows_the_papers_number(tmp_path):
    spec = study(
        columns=["cifar10"],
        rows={"CL": "{column}_cl", "CACR": "{column}_cacr_k4"},
        breakdown=True,
        paper={"CACR": {"cifar10": 80.0}},
    )
    trials = tmp_path / "trials"
    made = [
        ("a", "CL__cifar10", "completed", 60.0, (70.0, 50.0, None)),
        ("b", "CL__cifar10", "completed", 62.0, (72.0, 52.0, None)),
        ("c", "CL__cifar10", "error", 10.0, (1.0, 1.0, None)),  # failed: left out
        ("d", "CACR__cifar10", "completed", 65.0, (75.0, 55.0, None)),
    ]
    rows = []
    for trial, arm, status, top1, shots in made:
        (trials / trial).mkdir(parents=True)
        (trials / trial / "results.json").write_text(json.dumps(_results(top1, top1 - 5, shots)))
        rows.append(SimpleNamespace(trial_id=trial, arm=arm, status=status))
    stats = collect(spec, rows, trials)
    assert stats["CL__cifar10"]["value"].values == [60.0, 62.0]
    assert headers(spec) == [
        "method",
        "cifar10",
        "cifar10 many",
        "cifar10 medium",
        "cifar10 few",
        "paper cifar10",
    ]
    body = table_rows(spec, stats)
    assert body[0] == [
        "CL",
        "61.00 ± 1.41 (n=2)",  # sample std of 60, 62: sqrt(2)
        "71.00 ± 1.41 (n=2)",
        "51.00 ± 1.41 (n=2)",
        "-",
        "-",
    ]
    assert body[1] == ["CACR", "65.00 (n=1)", "75.00 (n=1)", "55.00 (n=1)", "-", "80.00"]
    knn = collect({**spec, "metric": "knn_top1"}, rows, trials)
    assert knn["CL__cifar10"]["value"].values == [55.0, 57.0]

    files = write_study(spec, stats, tmp_path)
    text = files["md"].read_text()
    assert "| CL | 61.00 ± 1.41 (n=2) |" in text and "seeds [0, 1, 2]" in text
    table = list(csv.DictReader(files["csv"].open()))
    cacr = next(r for r in table if r["method"] == "CACR" and r["part"] == "value")
    assert float(cacr["mean"]) == 65.0 and cacr["paper"] == "80.0" and cacr["n"] == "1"
    assert files["png"].stat().st_size > 5_000


def test_searches_and_studies_go_under_cacr_storage_like_runs(monkeypatch, tmp_path):
    """CACR_STORAGE moved pretraining runs only; searches and studies still went to ~/cacr-runs."""
    roots = {}
    for value in (str(tmp_path), None):
        if value:
            monkeypatch.setenv("CACR_STORAGE", value)
        else:
            monkeypatch.delenv("CACR_STORAGE", raising=False)
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            roots[value] = [
                OmegaConf.to_container(compose(name), resolve=True)["tune"]["storage_path"]
                for name in ("tune", "study")
            ]
            run = OmegaConf.to_container(compose("pretrain"), resolve=True)["trainer"]["storage_path"]
        assert roots[value] == [f"{run}/searches", f"{run}/studies"]
    assert roots[str(tmp_path)][0] == f"{tmp_path}/searches"
    assert roots[None][1] == str(Path.home() / "cacr-runs" / "studies")


@pytest.mark.parametrize("name", STUDIES)
def test_every_shipped_study_composes_and_every_cell_names_a_preset(name):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("study", overrides=[f"study={name}"]), resolve=True)
    spec = cfg["study"]
    presets = {p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml")}
    assert {c.experiment for c in cells(spec)} <= presets
    assert cfg["tune"]["storage_path"].endswith("studies") and spec["name"] == name
    if name.endswith("_demo"):
        assert spec["seeds"] == [0, 1, 2] and "dataset=cifar10_sample" in spec["overrides"]
    raw = yaml.safe_load((ROOT / "configs" / "study" / f"{name}.yaml").read_text())
    assert raw["name"] == name


def test_the_shipped_studies_are_the_papers_three_at_two_sizes():
    assert set(STUDIES) == {
        f"{s}{size}" for s in ("small_scale_methods", "imbalanced", "k_ablation") for size in ("", "_demo")
    }
