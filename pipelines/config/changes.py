"""What a resumed run may change from the config it was started with."""

from __future__ import annotations

import copy
from typing import Any

from pipelines.core.config_schema import GROUPS, with_defaults

# settings a resumed run may change; any other difference from the saved config is refused
RESUMABLE_CHANGES = (
    "trainer.num_workers",
    "trainer.use_gpu",
    "trainer.resources_per_worker",
    "trainer.max_failures",
    "trainer.storage_shared",
    "trainer.log_every_steps",
    "trainer.stop_at_epoch",
    "trainer.checkpoint_every_steps",
    "trainer.num_to_keep",
    "trainer.prefetch_batches",
    "trainer.preemption_watcher",
    "trainer.debug_nan_at_step",
    "eval",
    "ray",
    "dataset.root",
    "dataset.num_classes",  # a check against the shards only: the count always comes from them
    "experiment_name",  # only the default of trainer.name (renamed presets keep resuming old runs)
)


def config_changes(saved: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configs, except the resumable ones."""
    changes = []
    for key in sorted(set(saved) | set(new)):
        dotted = f"{prefix}{key}"
        if any(dotted == r or dotted.startswith(r + ".") for r in RESUMABLE_CHANGES):
            continue
        a, b = saved.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += config_changes(a, b, dotted + ".")
        elif a != b:
            changes.append(f"{dotted}: {a!r} -> {b!r}")
    return changes


def with_schema_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved run config with the keys the schema has gained since filled in with their defaults.

    A run started before a key existed resumes as if it had the default then (what it ran with).
    """
    out = dict(saved)
    for group in GROUPS:
        if "/" not in group and isinstance(saved.get(group), dict):
            out[group] = with_defaults(group, saved[group])
    return out


# option names this version renamed: (group, key path) -> {old: new}
RENAMED: dict[tuple[str, ...], dict[str, str]] = {
    ("augment", "name"): {"imagenet_mocov2": "imagenet_moco_v2", "imagenet_mocov3": "imagenet_moco_v3"},
    ("eval", "protocol", "name"): {"mocov2": "moco_v2", "mocov3": "moco_v3"},
}


def migrate_saved(saved: dict[str, Any]) -> dict[str, Any]:
    """A run's saved config as this version reads it, meaning what the run really ran with.

    Renamed option names take their new names. A config saved before the typed schema (it has no
    ``framework.forward``) encoded every view in one joint pass and normalised CIFAR-10 with the
    pixel std, so it gets ``framework.forward: joint`` and ``augment.mean_std: cifar10_exact``:
    resuming it under today's defaults is then refused as a change, naming both keys, instead of
    going on silently with different training. Keys added since take their defaults.
    """
    out = copy.deepcopy(saved)
    for path, names in RENAMED.items():
        node = out
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(path[-1]) in names:
            node[path[-1]] = names[node[path[-1]]]
    framework, augment = out.get("framework"), out.get("augment")
    if isinstance(framework, dict) and "forward" not in framework:  # saved before the typed schema
        framework["forward"] = "joint"
        if isinstance(augment, dict) and augment.get("mean_std") == "cifar10":
            augment["mean_std"] = "cifar10_exact"  # the std it used: (0.2470, 0.2435, 0.2616)
    return with_schema_defaults(out)
