"""Config composition and the checks that run before Ray starts (no Ray)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException

from pipelines.config.changes import config_changes
from pipelines.config.checks import check_config
from pipelines.config.paths import resolve_paths
from pipelines.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = ROOT / "configs"
PRESETS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))


def composed(*overrides: str) -> dict:
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("pretrain", overrides=list(overrides))
    return resolve_paths(OmegaConf.to_container(cfg, resolve=True), ROOT)


def test_every_paper_setting_has_a_preset() -> None:
    small = {
        f"{d}_{m}"
        for d in ("cifar10", "cifar100", "stl10")
        for m in ("cl", "au_cl", "hn_cl", "cacr_k1", "cacr_k4")
    }
    imbalanced = {
        f"{d}_imbalanced_{m}"
        for d in ("cifar10", "cifar100")
        for m in ("cl", "au_cl", "hn_cl", "cacr_k1", "cacr_k4")
    }
    large = {
        "imagenet100_moco_v2_cacr",
        "imagenet1k_moco_v3_cacr_r50",
        "imagenet1k_moco_v3_cacr_vitb",
        "webvision_moco_v2_cacr",
        "imagenet22k_moco_v2_cacr",
        "smoke",
        "demo",
    }
    assert small | imbalanced | large <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_passes_the_checks(preset: str, tmp_path) -> None:
    cfg = composed(f"experiment={preset}", f"dataset.root={tmp_path}", f"trainer.storage_path={tmp_path}")
    if cfg["model"].get("sync_bn"):
        assert cfg["trainer"]["use_gpu"]
    assert cfg["trainer"]["max_failures"] == (3 if cfg["trainer"]["use_gpu"] else 0)  # clusters lose workers
    plan = check_config(cfg)
    assert cfg["trainer"]["name"] == preset
    assert plan.per_worker_batch * cfg["trainer"]["num_workers"] == cfg["trainer"]["batch_size"]


@pytest.mark.parametrize(
    ("preset", "t_neg", "k", "lr"),
    [
        ("cifar10_cacr_k4", 0.9, 4, 0.06),
        ("cifar10_cacr_k1", 2.0, 1, 0.06),
        ("cifar100_cacr_k4", 2.0, 4, 0.06),
        ("cifar100_cacr_k1", 3.0, 1, 0.06),
        ("stl10_cacr_k4", 2.0, 4, 0.06),
        ("stl10_cacr_k1", 3.0, 1, 0.06),
    ],
)
def test_paper_cacr_temperatures_and_learning_rate(preset, t_neg, k, lr, tmp_path) -> None:
    cfg = composed(f"experiment={preset}", f"dataset.root={tmp_path}")
    assert cfg["objective"]["hparams"]["t_neg"] == t_neg and cfg["objective"]["hparams"]["t_pos"] == 1.0
    assert cfg["objective"]["K"] == k
    assert check_config(cfg).lr == pytest.approx(lr)  # 0.12 per 256 at batch 128
    assert cfg["trainer"]["schedule"]["milestones"] == [155, 170, 185] and cfg["trainer"]["epochs"] == 200


def test_baseline_temperatures_and_large_scale_settings(tmp_path) -> None:
    root = f"dataset.root={tmp_path}"
    assert composed("experiment=cifar10_cl", root)["objective"]["hparams"]["tau"] == 0.19
    assert composed("experiment=cifar10_au_cl", root)["objective"]["hparams"]["unif_t"] == 2.0
    hn = composed("experiment=cifar10_hn_cl", root)["objective"]["hparams"]
    assert (hn["tau"], hn["beta"]) == (0.5, 1.0)
    r50 = composed("experiment=imagenet1k_moco_v3_cacr_r50", root)
    assert check_config(r50).lr == pytest.approx(4.8) and r50["trainer"]["optimizer"]["name"] == "lars"
    vit = composed("experiment=imagenet1k_moco_v3_cacr_vitb", root)
    assert check_config(vit).lr == pytest.approx(2.4e-3) and vit["objective"]["hparams"]["temperature"] == 0.2
    moco_v2 = composed("experiment=imagenet100_moco_v2_cacr", root)
    assert moco_v2["framework"]["queue_size"] == 65536 and check_config(moco_v2).lr == pytest.approx(0.03)
    imb = composed("experiment=cifar100_imbalanced_cacr_k4", root)
    assert imb["dataset"]["imbalance"]["rule"] == "cacr_cifar100_exp"
    assert imb["eval"]["protocol"]["name"] == "small_scale"
    assert (moco_v2["eval"]["protocol"]["name"], r50["eval"]["protocol"]["name"]) == ("moco_v2", "moco_v3")
    swapped = composed("experiment=imagenet100_moco_v2_cacr", root, "objective=moco_infonce")
    assert (swapped["objective"]["K"], swapped["objective"]["hparams"]) == (1, {"tau": 0.2})
    check_config(swapped)  # a baseline on top of the CACR preset needs no further overrides


SMALL_SCALE = [p for p in PRESETS if p.split("_")[0] in ("cifar10", "cifar100", "stl10")]


@pytest.mark.parametrize("preset", SMALL_SCALE)
def test_small_scale_presets_probe_and_normalise_as_the_official_code_of_their_dataset(
    preset, tmp_path
) -> None:
    """The probe's random-resized-crop scale: STL-10 (0.08, 1) (the official
    small_scale_experiments/stl10/linear_eval.py:48), CIFAR (0.2, 1) (cifar10/ and
    cifar100/linear_eval.py:48), kept when the protocol is named again; normalisation by dataset."""
    dataset = preset.split("_")[0]
    root = f"dataset.root={tmp_path}"
    for cfg in (
        composed(f"experiment={preset}", root),
        composed(f"experiment={preset}", root, "eval/protocol=small_scale"),
    ):
        assert cfg["eval"]["protocol"]["name"] == "small_scale"
        assert cfg["eval"]["protocol"]["crop_scale"] == ([0.08, 1.0] if dataset == "stl10" else [0.2, 1.0])
        assert cfg["augment"]["mean_std"] == dataset


def errors_of(cfg: dict) -> str:
    with pytest.raises(ConfigError) as info:
        check_config(cfg)
    return str(info.value)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["objective.K=0"], "objective.K=0"),
        (["objective.hparams.t_neg=-1"], "t_neg"),
        (["objective.hparams.t_pos=0"], "t_pos"),
        (["trainer.batch_size=100", "trainer.num_workers=3"], "not divisible by trainer.num_workers=3"),
        (
            ["framework=moco_v2", "objective=cacr_moco_v2", "framework.queue_size=1000"],
            "framework.queue_size=1000 must be a positive multiple",
        ),
        (["dataset.root=null"], "dataset.root is not set"),
        (["dataset.root=/no/such/folder"], "dataset.root=/no/such/folder: no such file"),
        (["framework=moco_v2"], "does not work with framework 'moco_v2'"),
        (["objective=cl"], "compares exactly 2 views (objective.K=1)"),
        (["model.sync_bn=true"], "model.sync_bn=true needs GPUs"),
        (["model.image_size=64"], "set model.image_size=32"),
        (["trainer.stop_at_epoch=9", "trainer.epochs=4"], "trainer.stop_at_epoch=9"),
        (["trainer.optimizer.name=adam"], "trainer.optimizer.name='adam'"),
        (["eval.protocol.epochs=0"], "eval.protocol.epochs"),
        (["eval.protocol.milestones=[60,200]"], "eval.protocol.milestones"),
        (["eval.knn_k=0"], "eval.knn_k=0"),
        (["eval.knn_report_k=[10,0]"], "eval.knn_report_k=[10, 0]: must be a list of positive integers"),
        (["eval.few_shot_below=200"], "eval.few_shot_below=200"),
        (["augment.mean_std=cifar"], "augment.mean_std='cifar'"),
        (["trainer.channels_last=yes"], "trainer.channels_last='yes': choose true, false or auto"),
        (["trainer.channels_last=1"], "trainer.channels_last=1: choose true, false or auto"),
        (["eval.centre_crop=1.5"], "eval.centre_crop=1.5"),
        (["+trainer.batchsize=64"], "trainer.batchsize is not a setting (added with '+'? check its spelling"),
        (["+trainer.optimizer.lrr=0.1"], "trainer.optimizer.lrr is not a setting"),
        (
            ["+model.widht=0.5"],
            "model.widht is not a setting (added with '+'? check its spelling: did you mean model.width?",
        ),
        (["model.width=0"], "model.width=0.0: must be a number > 0"),
        (["trainer.num_to_keep=0"], "trainer.num_to_keep=0: must be an integer >= 1"),
        (
            ["augment.size=20", "model.image_size=20"],
            "model.image_size must be 32 or 64 for small_alexnet, got 20",
        ),
        (
            ["model=vit_s16", "augment=imagenet_moco_v3", "objective=cacr_moco_v3", "objective.K=1"],
            "model.width must be 1.0 for vit_s16 (width scaling is small_alexnet only), got 0.125 "
            "(the default experiment, demo, sets model.width=0.125",
        ),
        (
            [
                "model=resnet18",
                "augment.size=32",
                "model.image_size=32",
                "model.norm=none",
                "model.width=1.0",
            ],
            "model.norm must be 'batch' for resnet18",
        ),
        (["dataset.max_train_images=0"], "dataset.max_train_images=0: must be an integer >= 1, or null"),
        (["dataset.max_train_images=-5"], "dataset.max_train_images=-5: must be an integer >= 1, or null"),
    ],
)
def test_config_errors_name_the_key_and_the_fix(overrides: list[str], expected: str) -> None:
    assert expected in errors_of(composed(*overrides))


def test_all_problems_are_reported_at_once() -> None:
    text = errors_of(composed("objective.K=0", "trainer.batch_size=7", "dataset.root=null"))
    assert "objective.K=0" in text and "trainer.batch_size=7" in text and "dataset.root" in text


def test_unknown_group_option_is_named_by_hydra() -> None:
    with pytest.raises(MissingConfigException, match="objective/nope"):
        composed("objective=nope")
    with pytest.raises(MissingConfigException, match="eval/protocol/nope"):
        composed("eval/protocol=nope")


def test_resume_refuses_a_changed_config_but_allows_operational_changes() -> None:
    cfg = composed()
    same = copy.deepcopy(cfg)
    same["trainer"]["num_workers"] = 4
    same["eval"]["knn_k"] = 20
    assert config_changes(cfg, same) == []
    other = copy.deepcopy(cfg)
    other["objective"]["hparams"]["t_neg"] = 2.0
    assert config_changes(cfg, other) == ["objective.hparams.t_neg: 0.9 -> 2.0"]


def test_relative_paths_become_absolute() -> None:
    cfg = composed("trainer.storage_path=some/runs")
    assert cfg["dataset"]["root"] == str(ROOT / "data" / "cifar10-sample")
    assert Path(cfg["trainer"]["storage_path"]).is_absolute()


def test_the_command_fails_before_ray_starts(tmp_path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "pipelines/pretrain.py",
            "experiment=cifar10_cacr_k4",
            f"trainer.storage_path={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line
    assert proc.stderr.startswith("config error: ") and "dataset.root is not set" in proc.stderr
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr
    assert not any(tmp_path.iterdir())


def test_the_presets_page_has_a_row_for_every_paper_preset_with_its_header_command() -> None:
    page = (ROOT / "docs" / "presets.md").read_text()
    for preset in PRESETS:
        if preset in ("demo", "smoke"):
            continue
        header = (CONFIGS / "experiment" / f"{preset}.yaml").read_text()
        command = next(x for x in header.splitlines() if x.startswith("#") and "pipelines/prepare.py" in x)
        row = next((x for x in page.splitlines() if x.startswith(f"| `{preset}` |")), None)
        assert row is not None, preset
        assert "python " + command.split("python ", 1)[1].strip() in row, preset


def test_hydras_own_command_line_errors_exit_2_like_every_config_error(tmp_path) -> None:
    """An unknown option or key is refused by Hydra before our code runs; it is still exit code 2."""
    cases = [
        ("pipelines/pretrain.py", "trainer.batch_sise=8", "batch_sise"),
        ("pipelines/pretrain.py", "objective=nope", "objective/nope"),
        ("pipelines/prepare.py", "dataset=nope", "dataset/nope"),
        ("pipelines/linear_probe.py", "eval.nope=1", "nope"),
        ("pipelines/tune.py", "search=nope", "search/nope"),
        ("pipelines/study.py", "study.nope=1", "nope"),
        (
            "pipelines/prepare.py",
            "out=~/shards",
            "hint: out=~/shards: write the home folder as $HOME (out=$HOME/shards)",
        ),
        (
            "pipelines/pretrain.py",
            "trainer.epoch=2",
            "hint: trainer.epoch is not a setting: did you mean trainer.epochs?",
        ),
    ]
    import os

    for (script, override, named), full in zip(cases, ["1", "0", "1", "0", "1", "0", "0", "1"], strict=True):
        proc = subprocess.run(
            [sys.executable, script, override, f"hydra.run.dir={tmp_path}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "HYDRA_FULL_ERROR": full},  # Hydra raises (1) or exits 1 (0)
        )
        assert proc.returncode == 2, (script, override, proc.returncode, proc.stderr[-1500:])
        assert named in proc.stderr
        assert ("Traceback" in proc.stderr) == (full == "1")
    assert not any(tmp_path.iterdir())


def test_a_dataset_root_without_the_shards_or_splits_is_refused_before_ray_starts(tmp_path) -> None:
    sample = ROOT / "data" / "cifar10-sample"
    cases = [
        (
            ["dataset=shards", f"dataset.root={tmp_path}"],
            "raw images or a raw dataset are written into shards first: python pipelines/prepare.py",
        ),
        (
            [f"dataset.root={sample}", "dataset.eval_split=val"],
            "dataset.eval_split=val: dataset 'cifar10_jpeg'",
        ),
        (["dataset.name=imagefolder", f"dataset.root={tmp_path}"], "run `python pipelines/prepare.py"),
        (  # a preset's class count on other shards (the 10-class sample) was ignored
            [f"dataset.root={sample}", "dataset.num_classes=100"],
            f"dataset.num_classes=100 but the shards in {sample} hold 10 classes: point dataset.root at the "
            "100-class shards this setting expects, or set dataset.num_classes=null",
        ),
    ]
    for overrides, expected in cases:
        proc = subprocess.run(
            [
                sys.executable,
                "pipelines/pretrain.py",
                "experiment=smoke",
                *overrides,
                f"trainer.storage_path={tmp_path / 'runs'}",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, (overrides, proc.stderr[-2000:])
        assert proc.stderr.startswith("config error: ") and expected in proc.stderr, proc.stderr[-2000:]
        assert "Started a local Ray instance" not in proc.stdout + proc.stderr


def test_a_run_the_cluster_cannot_hold_at_once_is_named_with_its_numbers() -> None:
    from pipelines.config.checks import capacity_problem

    tr = {"num_workers": 2, "resources_per_worker": {"CPU": 0.5}, "read_task_cpus": 1.0, "use_gpu": False}
    assert capacity_problem(tr, {"CPU": 2.0}) is None  # 2 x 0.5 + 1 = 2
    tr["resources_per_worker"] = {"CPU": 1}
    assert capacity_problem(tr, {"CPU": 2.0}) == (
        "the run needs 3 CPUs at once (2 worker(s) x 1 + 1 for its data reads), but the cluster has 2: "
        "lower trainer.num_workers / trainer.resources_per_worker / trainer.read_task_cpus"
    )
    assert capacity_problem({**tr, "resources_per_worker": {}}, {"CPU": 3.0}) is None  # Ray's 1 CPU each
    gpu = {**tr, "use_gpu": True, "resources_per_worker": {"CPU": 4, "GPU": 1}, "num_workers": 8}
    assert capacity_problem(gpu, {"CPU": 64.0, "GPU": 8.0}) is None
    assert "the run needs 8 GPUs (8 worker(s) x 1), but the cluster has 4" in capacity_problem(
        gpu, {"CPU": 64.0, "GPU": 4.0}
    )
    only_gpus = {**gpu, "resources_per_worker": {"GPU": 1}, "num_workers": 4}  # no CPU asked
    assert capacity_problem(only_gpus, {"CPU": 4.0, "GPU": 4.0}) is None


@pytest.mark.parametrize(
    ("given", "use_gpu"),
    [
        *((g, False) for g in (None, {}, {"CPU": 0.5}, {"CPU": 2, "GPU": 0}, {"CPU": 0, "memory": 1e9})),
        *(
            (g, True)
            for g in (None, {}, {"CPU": 0.5}, {"GPU": 1}, {"CPU": 4, "GPU": 0.5}, {"CPU": 2, "GPU": 0})
        ),
    ],
)  # Ray refuses GPUs per worker without use_gpu, so those pairs are not here
def test_worker_resources_are_what_ray_trains_scaling_config_reserves(given, use_gpu) -> None:
    from ray.train import ScalingConfig

    from pipelines.config.checks import worker_resources

    as_run_passes_it = dict(given or {}) or None  # pipelines/training/run.py
    ray_rule = ScalingConfig(num_workers=2, use_gpu=use_gpu, resources_per_worker=as_run_passes_it)
    assert worker_resources({"resources_per_worker": given, "use_gpu": use_gpu}) == {
        k: float(v) for k, v in ray_rule._resources_per_worker_not_none.items()
    }
