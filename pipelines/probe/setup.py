"""What a probe of ``pipelines/linear_probe.py`` runs with, settled on the driver before any Ray work.

Its ``eval`` settings (the run's own, changed by the command line), the dataset it judges on (the
run's, or another one's shards with their own classes), its name in ``results.json``, and a check
that the checkpoint's backbone fits the run's model.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import yaml

from pipelines.core import checkpoints as ckpt
from pipelines.core.config_schema import with_defaults
from pipelines.core.errors import ConfigError
from pipelines.core.storage import is_uri
from pipelines.evaluation.export import fit_problem, load_state
from pipelines.models.build import backbone_of


def probe_eval(
    saved: dict[str, Any] | None, composed: dict[str, Any], overrides: list[str]
) -> dict[str, Any]:
    """The ``eval`` group a probe runs with: the run's saved one, then the command line's changes.

    Top-level keys the run's config lacks (added to the platform later) come from ``composed``
    (the command's defaults); the run's probe ``protocol`` is kept whole (a protocol is never
    mixed with another one's keys). Of ``composed``'s values only those the command line set
    (``overrides``: ``eval.<key>=...``, ``~eval.<key>`` or ``eval/protocol=<name>``) replace the
    run's.
    """
    merged = {**copy.deepcopy(composed), **copy.deepcopy(saved or {})}
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if key.startswith("eval/protocol"):
            merged["protocol"] = copy.deepcopy(composed["protocol"])
        elif key.startswith("eval."):
            *path, last = key.split(".")[1:]
            src, dst = composed, merged
            for part in path:
                src, dst = src.get(part) or {}, dst.setdefault(part, {})
            if override.startswith("~"):
                dst.pop(last, None)
            else:
                dst[last] = copy.deepcopy(src.get(last))
    return merged


def judged_dataset(run_dataset: dict[str, Any], other: dict[str, Any] | None) -> tuple[dict[str, Any], bool]:
    """The ``dataset`` group a probe reads, and whether it is another dataset than the run's.

    Args:
        run_dataset: the run's saved ``dataset`` group.
        other: the command's ``eval_dataset`` group; its ``root`` set means: judge on that
            dataset (its own classes, ``train_split`` for the probe and the kNN bank,
            ``eval_split`` held out), e.g. ImageNet-1K shards for a WebVision or ImageNet-22K run.

    Raises:
        ConfigError: naming ``eval_dataset.root`` when it does not exist.
    """
    if not other or not other.get("root"):
        return run_dataset, False
    root = str(other["root"])
    if not is_uri(root):
        root = str(Path(root).expanduser().resolve())
        if not Path(root).exists():
            raise ConfigError(f"eval_dataset.root={other['root']}: no such folder; pass prepared shards")
    dataset = {
        **run_dataset,
        "name": other["name"],
        "root": root,
        "train_split": other["train_split"],
        "eval_split": other["eval_split"],
        "num_classes": None,
        "imbalance": {**run_dataset["imbalance"], "rule": "none", "balanced": False},
        "max_train_images": None,
    }
    return dataset, True


def check_backbone(run_cfg: dict[str, Any], checkpoint: Path, weights: Path | None = None) -> None:
    """Refuse, before any Ray work, backbone weights that do not fit the run's ``model``.

    Args:
        run_cfg: the run's saved config.
        checkpoint: the checkpoint folder whose ``backbone.pt`` is judged.
        weights: another weights file judged instead (``backbone=``): a state dict or an official
            CACR-SSL / MoCo checkpoint, read by :func:`~pipelines.evaluation.export.load_state`.

    Raises:
        ConfigError: naming the weights file, the model and the first keys or shapes that differ.
        ValueError: in one line naming the file, when it is neither a state dict nor an official
            checkpoint, or holds more than tensors.
    """
    path = weights or checkpoint / ckpt.BACKBONE
    state = load_state(path)
    what = fit_problem(state, backbone_of(run_cfg["model"]).state_dict())
    if what:
        model = run_cfg["model"]
        hint = (
            "judge it with a run of its model"
            if weights
            else "was config.yaml edited? Probe the run that wrote it"
        )
        raise ConfigError(
            f"{path} does not fit the run's model (model.name={model.get('name')}, "
            f"image_size={model.get('image_size')}): {what}; {hint}"
        )


PROTOCOLS = Path(__file__).resolve().parents[2] / "configs" / "eval" / "protocol"  # the shipped ones


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def protocol_changes(protocol: dict[str, Any], shipped_dir: Path = PROTOCOLS) -> str:
    """How ``protocol`` differs from the shipped protocol of its name, e.g. ``"epochs 3, milestones []"``.

    Empty when it is the shipped one, or no shipped protocol has its name.
    """
    path = shipped_dir / f"{protocol.get('name')}.yaml"
    if not path.is_file():
        return ""
    shipped = {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if k != "defaults"}
    base, mine = with_defaults("eval/protocol", shipped), with_defaults("eval/protocol", protocol)
    return ", ".join(f"{k} {_shown(v)}" for k, v in mine.items() if v != base.get(k))


def probe_key(
    protocol: str,
    dataset: dict[str, Any],
    other: bool,
    probes: dict[str, Any] | None = None,
    changes: str = "",
) -> str:
    """The name of a probe's entry in ``results.json``.

    The protocol, how it differs from the shipped one of its name (``changes``, from
    :func:`protocol_changes`: a probe with other settings never replaces another's entry), and
    the dataset when another than the run's. The dataset is named by its folder; when ``probes``
    (the entries already there) hold that name for another folder, a short hash of the root
    tells the two apart.
    """
    name = f"{protocol} ({changes})" if changes else protocol
    if not other:
        return name
    root = str(dataset["root"]).rstrip("/")
    key = f"{name} on {Path(root).name}"
    there = ((probes or {}).get(key) or {}).get("judged_on") or {}
    if there and str(there.get("root") or "").rstrip("/") != root:
        key += f" ({hashlib.blake2b(root.encode(), digest_size=3).hexdigest()})"
    return key
