"""Release what Ray Train leaves behind when a Tune trial ends (its worker group's placement group).

Measured with Ray 2.60: a ``TorchTrainer`` run inside a Tune function trainable keeps its worker
group's placement group reserved after the trial completes or ASHA stops it, so the CPUs stay
taken and later trials' Ray Data tasks starve. Each pretraining run records its placement group
ids (``placement_groups.txt``); this callback removes the ones still alive when the trial ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray
from ray import tune

from pipelines.core.run_files import PLACEMENT_GROUPS


def release_trial_resources(run_dir: str | Path) -> int:
    """Remove the placement groups a run recorded that are still alive; return how many."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, placement_group_table

    listed = Path(run_dir) / PLACEMENT_GROUPS
    if not listed.exists():
        return 0
    table = placement_group_table()
    removed = 0
    for hex_id in sorted(set(listed.read_text().split())):
        if table.get(hex_id, {}).get("state") == "CREATED":
            ray.util.remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(hex_id))))
            removed += 1
    return removed


class ReleaseTrialResources(tune.Callback):
    """On each trial's end (completed, stopped early or errored) release its run's placement groups."""

    def __init__(self, trials_dir: str) -> None:
        """``trials_dir`` holds one pretraining run folder per trial id."""
        self.trials_dir = trials_dir

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Tune calls this when a trial finished or was stopped."""
        release_trial_resources(Path(self.trials_dir) / trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Tune calls this when a trial failed."""
        release_trial_resources(Path(self.trials_dir) / trial.trial_id)
