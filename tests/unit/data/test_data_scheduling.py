"""Ray Data scheduler settings reach every process that unpickles the pipeline (the split
coordinator, Train workers) and nothing else; an upgrade that renames them fails here."""

from __future__ import annotations

import subprocess
import sys

from ray import cloudpickle

from pipelines.data import scheduling
from pipelines.data.read_tasks import read_decode_view

PROBE = """
import json, pickle, sys
from pipelines.data import scheduling
before = scheduling.current()
pickle.loads(sys.stdin.buffer.read())  # what Ray does with a task's or actor's arguments
print(json.dumps({"before": before, "after": scheduling.current()}))
"""


def test_unpickling_the_pipeline_in_a_fresh_process_applies_the_settings():
    import json

    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        input=cloudpickle.dumps(read_decode_view),
        capture_output=True,
        check=True,
        timeout=120,
    )
    seen = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert seen["before"] == scheduling.RAY_DEFAULTS  # Ray's own values, as measured against
    assert seen["after"] == {"wait_s": 0.01, "limits_refresh_s": 0.1}


def test_apply_returns_what_it_replaced_so_it_can_be_undone():
    ours = scheduling.current()
    assert ours == {"wait_s": scheduling.WAIT_S, "limits_refresh_s": scheduling.LIMITS_REFRESH_S}
    try:
        previous = scheduling.apply(**scheduling.RAY_DEFAULTS)
        assert previous == ours
        from ray.data._internal.execution import resource_manager, streaming_executor_state

        assert streaming_executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S == 0.1
        assert resource_manager.ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S == 1.0
    finally:
        scheduling.apply(**ours)
    assert scheduling.current() == ours


LAZY = """
import json, sys
from pipelines.data import scheduling
scheduling.apply_on_import()  # the job's worker_process_setup_hook
imported = "ray.data" in sys.modules
from ray.data._internal.execution import resource_manager, streaming_executor_state
print(json.dumps({"imported_by_hook": imported,
                  "wait_s": streaming_executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S,
                  "limits_refresh_s": resource_manager.ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S,
                  "finder_left": any("SetOnImport" in type(f).__name__ for f in sys.meta_path)}))
"""


def test_the_setup_hook_leaves_ray_data_unimported_and_sets_the_values_when_it_is_imported():
    import json

    out = subprocess.run([sys.executable, "-c", LAZY], capture_output=True, check=True, timeout=120)
    seen = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert seen == {"imported_by_hook": False, "wait_s": 0.01, "limits_refresh_s": 0.1, "finder_left": False}
