"""Search configs, Tune spaces, trial overrides, the batch rule and the results files (no cluster)."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import pytest
import yaml

from pipelines.core.errors import ConfigError
from pipelines.search.results import TrialRow, best_config_file, best_row, plot_params, write_tables
from pipelines.search.run import _refuse_changed, check_search_settings, concurrency
from pipelines.search.space import (
    SearchConfigError,
    arms,
    param_space,
    trial_arm,
    trial_overrides,
    trial_values,
)
from pipelines.search.trial import compose_pretrain, keep_views_per_step

ROOT = Path(__file__).resolve().parents[3]
SEARCHES = ("cacr_temperatures", "cacr_k", "baselines")
FASTEST_WORKERS = {"cacr_temperatures": 2, "cacr_k": 2, "baselines": 2}  # benchmarks/search_speed.py searches


def shipped(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / "search" / f"{name}.yaml").read_text())


def _inside(spec: dict, value) -> bool:
    kind, values = next(iter(spec.items()))
    if kind in ("grid", "choice"):
        return value in values
    return values[0] <= value <= values[1]


@pytest.mark.parametrize("name", SEARCHES)
def test_shipped_searches_hold_the_paper_value_and_compose(name) -> None:
    search = shipped(name)
    for arm in arms(search):
        assert arm.paper and set(arm.paper) == set(arm.params)
        for key, value in arm.paper.items():
            assert _inside(arm.params[key], value), (arm.name, key)
        cfg = compose_pretrain(
            str(ROOT / "configs"),
            trial_overrides(
                search, {"arm": arm.name, **{f"{arm.name}::{k}": v for k, v in arm.paper.items()}}
            ),
            str(ROOT),
        )
        for key, value in arm.paper.items():
            node = cfg
            for part in key.split("."):
                node = node[part]
            assert node == value
        # the split each search was measured fastest with on 2 cores (docs/searches.md): one
        # two-worker trial at a time, or two one-worker trials; twice as many on 4 cores
        workers = FASTEST_WORKERS[name]
        assert cfg["trainer"]["num_workers"] == workers
        assert concurrency({"CPU": 2}, cfg, 0.5, None) == 2 // workers
        assert concurrency({"CPU": 4}, cfg, 0.5, None) == 4 // workers


def test_param_space_and_trial_values_per_arm() -> None:
    from ray import tune

    space = param_space(shipped("baselines"))
    points = space["arm"]["grid_search"]
    assert [p["name"] for p in points] == ["cl", "hn_cl", "au_cl"] and list(space) == ["arm"]
    sampler = points[2]["au_cl::objective.hparams.unif_t"]  # each arm's sampler in its own point
    assert isinstance(sampler, tune.search.sample.Float) and (sampler.lower, sampler.upper) == (0.5, 8.0)
    assert sorted(points[2]) == ["au_cl::objective.hparams.unif_t", "name"]
    config = {
        "arm": "hn_cl",
        "cl::objective.hparams.tau": 0.1,
        "hn_cl::objective.hparams.tau": 0.7,
        "au_cl::objective.hparams.unif_t": 3.0,
    }
    assert trial_values(shipped("baselines"), config) == {"objective.hparams.tau": 0.7}
    overrides = trial_overrides(shipped("baselines"), config)
    assert overrides[0] == "experiment=cifar10_hn_cl" and "objective.hparams.tau=0.7" in overrides
    assert "trainer.checkpoint_every_steps=0" in overrides and "eval.knn_every_epochs=1" in overrides


def test_an_arms_grid_adds_trials_to_that_arm_only() -> None:
    """Grids in two arms: 3 x 2 + 1 + 1 points per seed (they multiplied before), own keys sampled only."""
    from ray.tune.search.variant_generator import generate_variants

    search = {
        "name": "s",
        "experiment": "cifar10_cacr_k4",
        "arms": {
            "a": {"params": {"objective.t_neg": {"grid": [0.3, 0.9, 3.0]}, "objective.K": {"grid": [2, 4]}}},
            "b": {"params": {"objective.t_pos": {"grid": [0.5]}}},
            "c": {"params": {"optim.lr_per_256": {"loguniform": [0.1, 1.0]}}},
        },
        "shared": {"seed": {"grid": [0, 1]}},
    }
    trials = [
        (trial_arm(search, config).name, tuple(sorted(trial_values(search, config).items())))
        for _, config in generate_variants(param_space(search))
    ]
    assert len(trials) == (3 * 2 + 1 + 1) * 2
    a_trials = [values for arm, values in trials if arm == "a"]
    expected = {
        (("objective.K", k), ("objective.t_neg", t), ("seed", s))
        for t in (0.3, 0.9, 3.0)
        for k in (2, 4)
        for s in (0, 1)
    }
    assert set(a_trials) == expected and len(a_trials) == len(expected)
    assert sorted(v for arm, v in trials if arm == "b") == [
        (("objective.t_pos", 0.5), ("seed", 0)),
        (("objective.t_pos", 0.5), ("seed", 1)),
    ]
    for _, config in generate_variants(param_space(search)):  # a trial samples its own arm's keys only
        flat = [k for k in {**config, **config["arm"]} if "::" in k]
        assert {k.split("::")[0] for k in flat} == {config["arm"]["name"]}, config
    c_values = [dict(v) for arm, v in trials if arm == "c"]
    assert len(c_values) == 2 and all(0.1 <= v["optim.lr_per_256"] <= 1.0 for v in c_values)
    overrides = trial_overrides(search, next(c for _, c in generate_variants(param_space(search))))
    assert overrides[0] == "experiment=cifar10_cacr_k4" and any(
        o.startswith("objective.t_neg=") for o in overrides
    )


def test_the_search_file_in_searches_md_checks_and_makes_its_six_trials() -> None:
    from ray.tune.search.variant_generator import generate_variants

    from pipelines.search.run import _check_trials

    text = (ROOT / "docs" / "searches.md").read_text()
    example = re.search(r"```yaml\n(# my_searches/search/photos.yaml.*?)```", text, re.S).group(1)
    search = yaml.safe_load(example.replace("/data/shards/photos", str(ROOT / "data" / "cifar10-sample")))
    _, _, epochs = _check_trials(search, str(ROOT / "configs"))  # every arm composes and checks
    assert epochs == 20
    trials = [trial_overrides(search, config) for _, config in generate_variants(param_space(search))]
    assert len(trials) == 6 and sum("experiment=cifar10_cl" in t for t in trials) == 2
    # the shards are opened before Ray: a class count they lack is refused up front, not in each trial
    counted = {**search, "overrides": [*search["overrides"], "dataset.num_classes=100"]}
    with pytest.raises(ConfigError, match=r"search arm 'cacr' .*\n.*dataset.num_classes=100 but the shards"):
        _check_trials(counted, str(ROOT / "configs"))


@pytest.mark.parametrize("xs", [[0.261, 0.2705, 0.279], [0.06, 0.2, 0.9], [0.5], [0.01, 3.0]])
def test_log_axes_of_the_search_plot_have_readable_tick_labels(xs) -> None:
    """Within a decade, matplotlib labelled every minor tick of a log axis: 9 labels overlapped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipelines.search.results import _log_axis

    fig, ax = plt.subplots(figsize=(4.6, 3.8))
    ax.scatter(xs, [20.0] * len(xs))
    _log_axis(ax, xs)
    fig.tight_layout()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.get_xticklabels(which="both") if t.get_visible() and t.get_text()]
    lo, hi = ax.get_xlim()
    shown = [t for t in labels if lo <= t.get_position()[0] <= hi]
    boxes = [t.get_window_extent(renderer) for t in shown]
    plt.close(fig)
    assert len(shown) >= 2  # the axis is labelled
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]), [
        t.get_text() for t in shown
    ]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"params": {}}, "search.params is empty"),
        ({"params": {"a.b": {"loguniform": [0, 1]}}}, "low must be > 0"),
        ({"params": {"a.b": {"uniform": [2, 1]}}}, "low < high"),
        ({"params": {"a.b": {"normal": [0, 1]}}}, "one of loguniform"),
        ({"experiment": None}, "experiment"),
    ],
)
def test_bad_search_configs_name_the_key(change, words) -> None:
    with pytest.raises(SearchConfigError, match=words):
        arms({**shipped("cacr_temperatures"), **change})


def test_constant_views_batch_rule() -> None:
    search = shipped("cacr_k")
    base = compose_pretrain(
        str(ROOT / "configs"), trial_overrides(search, {"main::objective.K": 4}), str(ROOT)
    )
    views = base["trainer"]["batch_size"] * (base["objective"]["K"] + 1)
    assert views == 640
    unit = 2 * base["trainer"]["num_workers"]
    for k in (1, 2, 4, 8):
        cfg = compose_pretrain(
            str(ROOT / "configs"), trial_overrides(search, {"main::objective.K": k}), str(ROOT)
        )
        batch = keep_views_per_step(cfg, views)
        assert batch % unit == 0 and batch * (k + 1) <= views < (batch + unit) * (k + 1)
        assert cfg["trainer"]["batch_size"] == batch


def _rows() -> list[TrialRow]:
    return [
        TrialRow("t1", "main", {"objective.hparams.t_neg": 0.9}, 40.0, 41.0, 4, "completed"),
        TrialRow("t2", "main", {"objective.hparams.t_neg": 3.0}, 45.0, 45.0, 2, "stopped early (ASHA)"),
        TrialRow("t3", "main", {"objective.hparams.t_neg": 0.3}, 42.5, 43.0, 4, "completed"),
        TrialRow(
            "t4", "main", {"objective.hparams.t_neg": -1.0}, None, None, 0, "error", "t_neg must be > 0"
        ),
    ]


def test_best_row_prefers_completed_trials_and_tables_hold_every_trial(tmp_path) -> None:
    rows = _rows()
    assert best_row(rows).trial_id == "t3"  # t2 scored higher but did not run all epochs
    csv_path, md_path = write_tables(rows, tmp_path)
    table = list(csv.DictReader(csv_path.open()))
    assert [t["trial"] for t in table] == ["t1", "t2", "t3", "t4"]
    assert table[3]["status"] == "error" and table[3]["error"] == "t_neg must be > 0"
    assert table[2]["final kNN top-1"] == "42.50" and table[2]["objective.hparams.t_neg"] == "0.3"
    assert "| t3 | main | 0.3 | 42.50 | 43.00 | 4 | completed |" in md_path.read_text()
    png = plot_params(
        rows,
        shipped("cacr_temperatures") | {"params": {"objective.hparams.t_neg": {"loguniform": [0.1, 5]}}},
        tmp_path / "p.png",
    )
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_best_config_file_composes_to_the_trials_settings(tmp_path) -> None:
    search = shipped("cacr_temperatures")
    row = TrialRow(
        "t9",
        "main",
        {"objective.hparams.t_pos": 1.7, "objective.hparams.t_neg": 0.45},
        50.0,
        50.0,
        6,
        "completed",
    )
    path = best_config_file(row, search, tmp_path, batch=None)
    assert path == tmp_path / "configs" / "experiment" / "best.yaml"
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    trial = compose_pretrain(
        str(ROOT / "configs"),
        trial_overrides(
            search, {"main::objective.hparams.t_pos": 1.7, "main::objective.hparams.t_neg": 0.45}
        ),
        str(ROOT),
    )
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(
            "pretrain", overrides=["experiment=best", f"hydra.searchpath=[file://{tmp_path / 'configs'}]"]
        )
    best = OmegaConf.to_container(cfg, resolve=True)
    for group in ("objective", "framework", "model", "augment"):
        assert best[group] == trial[group], group
    assert best["trainer"]["epochs"] == 6 and best["model"]["width"] == 0.125
    assert (
        best["dataset"]["name"] == trial["dataset"]["name"]
        and best["experiment_name"] == "cacr_temperatures_best"
    )
    assert not math.isnan(best["objective"]["hparams"]["t_pos"])


def test_the_tune_command_refuses_a_bad_search_before_ray(tmp_path) -> None:
    import subprocess
    import sys

    args = [sys.executable, "pipelines/tune.py", f"tune.storage_path={tmp_path}"]
    bad_key = subprocess.run([*args, "~search.params"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad_key.returncode == 2 and "search.params is empty" in bad_key.stderr
    bad_preset = subprocess.run(
        [*args, "search.experiment=nope"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert bad_preset.returncode == 2 and "experiment/nope" in bad_preset.stderr
    assert not list(tmp_path.iterdir())  # nothing started, nothing written


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["search.num_samples=0"], "search.num_samples=0: must be an integer >= 1"),
        (["search.num_samples=lots"], "search.num_samples='lots': must be an integer >= 1"),
        (["search.asha.grace_period=0"], "search.asha.grace_period=0: must be an integer >= 1"),
        (["search.asha.reduction_factor=1"], "search.asha.reduction_factor=1: must be a number > 1"),
        (["tune.max_concurrent_trials=0"], "tune.max_concurrent_trials=0: must be an integer >= 1, or null"),
        (  # CACR_STORAGE=s3://... made searches go into a local folder named "s3:"
            ["tune.storage_path=s3://bucket/runs/searches"],
            "tune.storage_path=s3://bucket/runs/searches: a search keeps its trials and tables in a folder",
        ),
    ],
)
def test_the_searchs_own_numbers_are_checked_before_anything_is_written(tmp_path, overrides, words) -> None:
    """Ray Tune asserted on these, or ran no trial and exited 0, leaving a folder that refused
    the corrected command."""
    cfg = {"search": shipped("cacr_temperatures"), "tune": {"max_concurrent_trials": None}}
    for override in overrides:
        key, value = override.split("=")
        *path, last = key.split(".")
        node = cfg
        for part in path:
            node = node[part]
        node[last] = yaml.safe_load(value)
    with pytest.raises(ConfigError, match=re.escape(words)):
        check_search_settings(cfg["search"], cfg["tune"])


def test_a_changed_search_lists_what_differs_and_one_that_never_ran_takes_the_new_settings(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    old = shipped("cacr_temperatures")
    (folder / "search.yaml").write_text(yaml.safe_dump(old))
    new = {**old, "num_samples": 3}
    _refuse_changed(folder, new)  # no trial ever started there: nothing to mix with
    (folder / "tune").mkdir()
    (folder / "tune" / "tuner.pkl").write_bytes(b"")  # what Tune leaves once a search has started
    with pytest.raises(ConfigError, match=r"another search config:\n  search.num_samples: 8 -> 3"):
        _refuse_changed(folder, new)


def temperature_trial(tmp_path) -> tuple[dict, dict]:
    """A ``cacr_temperatures`` trial's spec (trials under ``tmp_path``) and its Tune config."""
    spec = {
        "search": shipped("cacr_temperatures"),
        "trials_dir": str(tmp_path),
        "project_root": str(ROOT),
        "config_dir": str(ROOT / "configs"),
    }
    return spec, {"main::objective.hparams.t_pos": 1.0, "main::objective.hparams.t_neg": 0.9}


def test_trial_names_that_look_like_numbers_stay_strings(tmp_path) -> None:
    from pipelines.search.trial import trial_config

    spec, config = temperature_trial(tmp_path)
    for name in ("982e1_00000", "12345_00001", "1e5"):  # Tune ids are <hex>_<number>
        _, cfg = trial_config(spec, config, name)
        assert cfg["trainer"]["name"] == name and cfg["trainer"]["storage_path"] == str(tmp_path)


def test_tune_preemption_watcher_true_turns_the_trials_watcher_on(tmp_path) -> None:
    from pipelines.search.trial import trial_config

    spec, config = temperature_trial(tmp_path)
    assert trial_config(spec, config, "t0")[1]["trainer"]["preemption_watcher"] is False  # the default
    on = trial_config({**spec, "preemption_watcher": True}, config, "t1")[1]
    assert on["trainer"]["preemption_watcher"] is True


def test_trials_read_tasks_take_the_trials_share_of_the_data_cpus(tmp_path) -> None:
    """Whole-CPU read tasks let one run at a time beside two trials on 2 cores (docs/searches.md)."""
    from pipelines.search.run import concurrency, read_task_cpus
    from pipelines.search.trial import trial_config

    assert (read_task_cpus(0.5), read_task_cpus(0.25), read_task_cpus(8.0)) == (0.5, 0.25, 1.0)
    spec, config = temperature_trial(tmp_path)
    assert trial_config(spec, config, "t0")[1]["trainer"]["read_task_cpus"] == 1.0  # outside a search
    assert trial_config({**spec, "read_task_cpus": 0.5}, config, "t1")[1]["trainer"]["read_task_cpus"] == 0.5
    # two 0.46-CPU trials and their quarter-CPU read tasks fit 2 CPUs; a third would not (3 x 0.46 + 0.75 > 2)
    tiny = {"trainer": {"num_workers": 1, "resources_per_worker": {"CPU": 0.45}, "use_gpu": False}}
    assert concurrency({"CPU": 2}, tiny, 0.25, None) == 2


def test_ashas_max_t_is_the_longest_arm_not_the_first() -> None:
    from pipelines.search.run import _check_trials

    search = shipped("baselines")
    search["arms"]["hn_cl"]["overrides"] = ["trainer.epochs=9"]  # a later arm runs longest
    search["arms"]["au_cl"]["overrides"] = ["trainer.epochs=4"]
    first, _, max_t = _check_trials(search, str(ROOT / "configs"))
    assert first["trainer"]["epochs"] == 6 and max_t == 9


def test_every_listed_value_is_checked_as_its_trial_would_run_before_ray() -> None:
    """``choice: [0, 2]`` for K passed the check and the first trial failed inside Tune."""
    from pipelines.search.run import _check_trials

    search = shipped("cacr_k")
    _check_trials(search, str(ROOT / "configs"))  # K 1, 2, 4, 8 with the batch each trial gets: fine
    search["params"]["objective.K"] = {"choice": [2, 0]}
    with pytest.raises(
        ConfigError, match=r"objective.K=0 \(listed in its choice\):\n.*objective.K=0: must be"
    ):
        _check_trials(search, str(ROOT / "configs"))
    search["params"]["objective.K"] = {"grid": [1]}
    search["shared"] = {"trainer.batch_size": {"grid": [64, 63]}}
    search.pop("batch_rule")
    with pytest.raises(
        ConfigError, match=r"trainer.batch_size=63 .*\n.*not divisible by trainer.num_workers=2"
    ):
        _check_trials(search, str(ROOT / "configs"))


def test_gpu_trials_count_only_the_cpus_ray_train_reserves() -> None:
    """With use_gpu and no CPU in resources_per_worker Ray Train asks each worker for 1 GPU only."""
    gpu = {"trainer": {"num_workers": 2, "use_gpu": True, "resources_per_worker": {"GPU": 1}}}
    # a trial: 2 GPUs, 0.01 CPU for its driver; its data: max(1, n x 1) CPUs
    assert concurrency({"CPU": 4, "GPU": 8}, gpu, 1.0, None) == 3  # 3 x 0.01 + 3 <= 4 < 4 x 0.01 + 4
    assert concurrency({"CPU": 64, "GPU": 8}, gpu, 1.0, None) == 4  # the GPUs bound it
