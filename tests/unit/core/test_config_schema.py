"""The typed config schema: wrong types and unknown keys fail at compose time, defaults live once."""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import re
import shutil

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from pipelines.config.changes import config_changes, with_schema_defaults
from pipelines.core.config_schema import GROUPS, SCHEMA, with_defaults

ROOT = pathlib.Path(__file__).resolve().parents[3]


def composed(config_dir: pathlib.Path, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return OmegaConf.to_container(compose("pretrain", overrides=list(overrides)), resolve=True)


def test_a_value_of_the_wrong_type_fails_at_compose_time_with_the_keys_name():
    with pytest.raises(Exception, match=r"trainer\.epochs") as err:
        composed(ROOT / "configs", "trainer.epochs=many")
    assert "many" in str(err.value)


@pytest.mark.parametrize(
    ("group", "text", "key"),
    [
        ("trainer", "defaults: [schema, _self_]\nepoch: 3\n", "epoch"),  # a typo of epochs
        ("model", "defaults: [schema, _self_]\nname: resnet18\nimage_size: big\n", "image_size"),
        ("dataset", "defaults: [schema, _self_]\nname: shards\nimbalance: {rule: none, ratio: x}\n", "ratio"),
    ],
)
def test_a_group_file_with_an_unknown_key_or_a_wrong_type_fails_naming_it(tmp_path, group, text, key):
    configs = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", configs)
    (configs / group / "broken.yaml").write_text(text)
    with pytest.raises(Exception, match=key):
        composed(configs, f"{group}=broken")


def _schema_defaults(group: str) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(GROUPS[group]), resolve=False, throw_on_missing=False)


def _repeats(values: dict, defaults: dict, prefix: str = "") -> list[str]:
    found = []
    for key, value in values.items():
        if key == "defaults" or key not in defaults:
            continue
        default = defaults[key]
        if isinstance(value, dict) and isinstance(default, dict) and default:
            found += _repeats(value, default, f"{prefix}{key}.")
        elif value == default and not isinstance(value, dict):
            found.append(f"{prefix}{key}")
    return found


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_every_group_file_builds_on_its_schema_and_repeats_none_of_its_defaults(group):
    files = sorted((ROOT / "configs" / group).glob("*.yaml"))
    assert files
    defaults = _schema_defaults(group)
    for path in files:
        data = yaml.safe_load(path.read_text()) or {}
        listed = [d if isinstance(d, str) else next(iter(d)) for d in data.get("defaults", [])]
        assert SCHEMA in listed or any((path.parent / f"{d}.yaml").exists() for d in listed), path
        repeated = _repeats(data, defaults)
        assert not repeated, f"{path.relative_to(ROOT)} repeats the schema's defaults: {repeated}"


def test_the_repeat_check_finds_a_repeated_default():
    trainer = _schema_defaults("trainer")
    assert _repeats({"epochs": 200, "optimizer": {"momentum": 0.9, "name": "lars"}}, trainer) == [
        "epochs",
        "optimizer.momentum",
    ]


def _schema_keys() -> set[str]:
    keys: set[str] = set()
    todo = list(GROUPS.values())
    while todo:
        node = todo.pop()
        for f in dataclasses.fields(node):
            keys.add(f.name)
            if dataclasses.is_dataclass(f.default_factory if callable(f.default_factory) else None):
                todo.append(f.default_factory)
    return keys


def _schema_get(node: ast.AST, keys: set[str]) -> str | None:
    """The key of a ``x.get("<schema key>")`` call, else ``None``."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and node.args[0].value in keys
    ):
        return node.args[0].value
    return None


def code_fallbacks(source: str, keys: set[str]) -> list[str]:
    """``x.get("<schema key>", <literal>)`` and ``x.get("<schema key>") or <literal>``: a second default."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or) and len(node.values) == 2:
            key, fallback = _schema_get(node.values[0], keys), node.values[1]
            literal = isinstance(fallback, ast.Constant) and fallback.value not in (None, "", 0, False)
            if key and literal:
                found.append(f"line {node.lineno}: .get({key!r}) or {fallback.value!r}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and len(node.args) == 2
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value in keys
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value is not None
        ):
            found.append(f"line {node.lineno}: .get({node.args[0].value!r}, {node.args[1].value!r})")
    return found


def test_no_code_carries_a_second_copy_of_a_config_default():
    keys = _schema_keys() - {"name"}
    found = {
        str(p.relative_to(ROOT)): hits
        for p in sorted((ROOT / "pipelines").rglob("*.py"))
        if (hits := code_fallbacks(p.read_text(), keys))
    }
    assert not found, f"defaults live in pipelines/core/config_schema.py only: {found}"


def test_the_fallback_check_finds_a_default_written_in_code():
    keys = _schema_keys()
    assert {"cache_mb", "max_bad_fraction", "knn_bank_size", "log_every_steps"} <= keys
    code = (
        'a = ev.get("cache_mb", 1024)\nb = spec.get("cache_mb")\nc = tr.get("log_every_steps", 20)\n'
        'd = ds.get("mix_row_groups") or 1\ne = ds.get("root") or ""\n'
    )
    assert code_fallbacks(code, keys) == [
        "line 1: .get('cache_mb', 1024)",
        "line 3: .get('log_every_steps', 20)",
        "line 4: .get('mix_row_groups') or 1",
    ]


def test_with_defaults_fills_the_schema_and_refuses_a_wrong_type():
    model = with_defaults("model", {"name": "resnet18", "projector": {"out": 64}})
    assert model["stem"] == "imagenet" and model["width"] == 1.0 and model["predictor"] is None
    assert model["projector"] == {
        "layers": 2,
        "hidden": 512,
        "out": 64,
        "batch_norm": True,
        "last_batch_norm": False,
        "output_bias": True,
    }
    with pytest.raises(ValidationError, match="image_size"):
        with_defaults("model", {"name": "resnet18", "image_size": "big"})


def test_a_run_saved_before_a_key_existed_resumes_without_a_reported_change():
    cfg = composed(ROOT / "configs", "experiment=cifar10_cl", "dataset.root=/x", "trainer.storage_path=/y")
    saved = {
        **cfg,
        "framework": {"name": "inbatch"},
        "eval": {k: v for k, v in cfg["eval"].items() if k != "cache_mb"},
    }
    assert config_changes(saved, cfg)  # the raw comparison would refuse the resume
    assert config_changes(with_schema_defaults(saved), cfg) == []
    changed = {**saved, "framework": {"name": "inbatch", "queue_size": 4096}}
    assert config_changes(with_schema_defaults(changed), cfg) == ["framework.queue_size: 4096 -> 65536"]


def documented_aliases() -> dict[str, str]:
    text = (ROOT / "configs" / "README.md").read_text()
    return dict(re.findall(r"^\| `(\w+)` \| `(\w+)` \|$", text, re.M))


@pytest.mark.parametrize("group", ["objective", "framework"])
def test_a_config_is_named_after_what_it_builds_or_a_documented_alias(group):
    import objectives

    aliases = documented_aliases()
    assert aliases["cl"] == "infonce_inbatch" and len(aliases) == 5
    for path in sorted((ROOT / "configs" / group).glob("*.yaml")):
        name = yaml.safe_load(path.read_text())["name"]
        assert path.stem == name or aliases.get(path.stem) == name, f"{path.name} builds {name}"
        if group == "objective":
            assert name in objectives.available()


def test_one_spelling_of_moco_v2_and_moco_v3_in_config_names():
    names = [p.stem for p in (ROOT / "configs").rglob("*.yaml")]
    assert not [n for n in names if re.search(r"mocov\d", n)]
    assert {"imagenet_moco_v2", "imagenet_moco_v3", "moco_v2", "moco_v3", "resnet50_moco_v3"} <= set(names)


def test_a_run_saved_before_the_schema_resumes_only_with_what_it_ran_with():
    from pipelines.config.changes import migrate_saved

    cfg = composed(
        ROOT / "configs", "experiment=cifar10_cacr_k4", "dataset.root=/x", "trainer.storage_path=/y"
    )
    old = {
        **cfg,
        "framework": {"name": "inbatch"},  # no forward: saved before the schema (one joint pass)
        "augment": {**cfg["augment"], "mean_std": "cifar10"},  # then the pixel std
    }
    assert sorted(config_changes(migrate_saved(old), cfg)) == [
        "augment.mean_std: 'cifar10_exact' -> 'cifar10'",
        "framework.forward: 'joint' -> 'per_view'",
    ]
    same = composed(
        ROOT / "configs",
        "experiment=cifar10_cacr_k4",
        "dataset.root=/x",
        "trainer.storage_path=/y",
        "framework.forward=joint",
        "augment.mean_std=cifar10_exact",
    )
    assert config_changes(migrate_saved(old), same) == []  # resumable with its own settings


def test_renamed_option_names_in_a_saved_run_read_as_their_new_names():
    from pipelines.config.changes import migrate_saved

    cfg = composed(
        ROOT / "configs", "experiment=imagenet100_moco_v2_cacr", "dataset.root=/x", "trainer.storage_path=/y"
    )
    old = {
        **cfg,
        "augment": {**cfg["augment"], "name": "imagenet_mocov2"},
        "eval": {**cfg["eval"], "protocol": {**cfg["eval"]["protocol"], "name": "mocov2"}},
    }
    migrated = migrate_saved(old)
    assert (
        migrated["augment"]["name"] == "imagenet_moco_v2"
        and migrated["eval"]["protocol"]["name"] == "moco_v2"
    )
    assert config_changes(migrated, cfg) == []


def test_a_predictor_can_be_given_on_the_command_line_to_a_model_without_one():
    from pipelines.models.build import build_framework

    head = "{layers: 2, hidden: 32, out: 16, batch_norm: false, last_batch_norm: false}"
    overrides = ["experiment=smoke", "framework=moco_v3", "objective=cacr_moco_v3", "objective.K=1"]
    cfg = composed(ROOT / "configs", *overrides, f"model.predictor={head}")
    assert cfg["model"]["predictor"]["hidden"] == 32  # the model's own predictor is null
    predictor = build_framework(cfg).online.predictor
    assert [type(m).__name__ for m in predictor] == ["Linear", "ReLU", "Linear"]  # no BatchNorm asked
    assert predictor[2].bias is not None  # output_bias: the schema's default


def test_an_old_run_resumes_under_a_renamed_preset_with_its_old_name():
    from pipelines.config.changes import migrate_saved

    new = composed(
        ROOT / "configs", "experiment=imagenet100_moco_v2_cacr", "trainer.name=imagenet100_mocov2_cacr"
    )
    old = {**new, "experiment_name": "imagenet100_mocov2_cacr"}
    assert new["experiment_name"] == "imagenet100_moco_v2_cacr"
    assert config_changes(migrate_saved(old), new) == []


@pytest.mark.parametrize(
    ("key", "meant"),
    [
        ("trainer.epoch", "trainer.epochs"),
        ("model.widht", "model.width"),
        ("eval.protocol.epoch", "eval.protocol.epochs"),
        ("trainer.epochs", None),  # a setting
        ("objective.hparams.t_neg", None),  # inside a mapping setting: not a misspelling of it
        ("dataset.options.variant", None),
        ("eval.protocol", None),  # a group of settings
        ("tune.name", None),  # not a pretraining group
        ("trainer.qqqq", None),  # nothing close
    ],
)
def test_close_key_suggests_the_setting_a_misspelt_key_meant_and_nothing_for_valid_keys(key, meant) -> None:
    from pipelines.core.config_schema import close_key

    assert close_key(key) == meant
