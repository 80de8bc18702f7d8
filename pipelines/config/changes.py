"""What a resumed run may change from the config it was started with."""

from __future__ import annotations

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
    "trainer.debug_nan_at_step",
    "eval",
    "ray",
    "dataset.root",
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
