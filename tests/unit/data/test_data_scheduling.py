"""Ray Data scheduler settings reach every process that unpickles the pipeline (the split
coordinator, Train workers) and nothing else; an upgrade that renames them fails here."""

from __future__ import annotations

import subprocess
import sys

import ray
from ray import cloudpickle

from pipelines.data import scheduling
from pipelines.data.read_tasks import read_decode_view
from tests.helpers.train_loops import SCHEDULER_SETTINGS as OURS

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
    assert seen["after"] == OURS


def test_apply_returns_what_it_replaced_so_it_can_be_undone():
    ours = scheduling.current()
    assert ours == OURS
    try:
        previous = scheduling.apply(**scheduling.RAY_DEFAULTS)
        assert previous == ours
        from ray.data._internal.execution import metadata_fetcher, resource_manager, streaming_executor_state

        assert streaming_executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S == 0.1
        assert resource_manager.ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S == 1.0
        assert metadata_fetcher._PREFETCH_ON_THREAD is True
        assert streaming_executor_state.ray is ray  # Ray's own module again, not a wrapper of it
    finally:
        scheduling.apply(**ours)
    assert scheduling.current() == ours
    wrapper = streaming_executor_state.ray
    assert isinstance(wrapper, scheduling.PromptWait) and wrapper._ray is ray  # never a wrapper of a wrapper
    assert wrapper.get is ray.get and wrapper.ObjectRef is ray.ObjectRef  # the rest is Ray's own


LAZY = """
import json, sys
from pipelines.data import scheduling
scheduling.apply_on_import()  # the job's worker_process_setup_hook
imported = "ray.data" in sys.modules
from ray.data._internal.execution import metadata_fetcher, resource_manager, streaming_executor_state
from ray.data._internal.cluster_autoscaler import DefaultClusterAutoscalerV2, RateBasedClusterAutoscaler
from ray.train.v2._internal.execution.scaling_policy import autoscaling_coordinator_client as train
expiry = [RateBasedClusterAutoscaler.__init__.__kwdefaults__["autoscaling_request_expire_time_s"],
          DefaultClusterAutoscalerV2.AUTOSCALING_REQUEST_EXPIRE_TIME_S,
          train.AUTOSCALING_REQUESTS_EXPIRE_TIME_S]
print(json.dumps({"imported_by_hook": imported,
                  "reservation_expiry_s": expiry,
                  "metadata_on_thread": metadata_fetcher._PREFETCH_ON_THREAD,
                  "wait_s": streaming_executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S,
                  "limits_refresh_s": resource_manager.ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S,
                  "prompt_wait": type(streaming_executor_state.ray).__name__ == "PromptWait",
                  "finder_left": any("SetOnImport" in type(f).__name__ for f in sys.meta_path)}))
"""


def test_the_setup_hook_leaves_ray_data_unimported_and_sets_the_values_when_it_is_imported():
    import json

    out = subprocess.run([sys.executable, "-c", LAZY], capture_output=True, check=True, timeout=120)
    seen = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert seen == {
        "imported_by_hook": False,
        "wait_s": 0.05,
        "limits_refresh_s": 0.1,
        "metadata_on_thread": False,
        "prompt_wait": True,
        "reservation_expiry_s": [30, 30, 60],  # what Ray Data's two autoscalers and Ray Train read
        "finder_left": False,
    }
