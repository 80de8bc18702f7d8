"""The scheduling loop's prompt wait, against real Ray tasks and a real Ray Data executor.

Ray's own ``ray.wait(tasks, num_returns=len(tasks), timeout=t)`` sleeps ``t`` unless every task is
done; :class:`~pipelines.data.scheduling.PromptWait` must return at the first new output, must not
return again for output left unread, and must hand Ray Data's loop the next task at once. The
margins are seconds against waits of 2-10 s, so a loaded machine does not decide them.
"""

from __future__ import annotations

import time

import pytest

from pipelines.data import scheduling
from tests.helpers.runs import wait_for


@pytest.fixture()
def nap(ray_cluster):
    @ray_cluster.remote(num_cpus=0)
    def nap(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    return nap


def timed_wait(wait, refs: list, timeout: float) -> tuple[list, list, float]:
    """``wait`` as Ray Data's loop calls it (for all of ``refs``): ready, pending and seconds taken."""
    start = time.monotonic()
    ready, pending = wait(refs, num_returns=len(refs), timeout=timeout, fetch_local=False)
    return ready, pending, time.monotonic() - start


def test_it_returns_at_the_first_finished_task_and_not_again_for_the_same_output(ray_cluster, nap):
    ray = ray_cluster
    quick, slow = nap.remote(0.2), nap.remote(60)
    try:
        ray.get(quick)
        ready, _, took = timed_wait(ray.wait, [quick, slow], timeout=2.0)
        assert ready == [quick] and took >= 1.9  # Ray's own wait sleeps its whole timeout

        prompt = scheduling.PromptWait(ray)
        ready, pending, took = timed_wait(prompt.wait, [quick, slow], timeout=10.0)
        assert (ready, pending) == ([quick], [slow]) and took < 5.0  # new output: at once
        ready, pending, took = timed_wait(prompt.wait, [quick, slow], timeout=2.0)
        assert (ready, pending) == ([quick], [slow]) and took >= 1.9  # the same output, unread: no spin
        ready, _, took = timed_wait(prompt.wait, [quick], timeout=2.0)
        assert ready == [quick] and took >= 1.9  # all output held back: sleeps instead of spinning
    finally:
        ray.cancel(slow, force=True)


def test_a_stream_taken_from_wakes_it_again_at_its_next_output(ray_cluster, nap):
    ray = ray_cluster

    @ray.remote(num_cpus=0, num_returns="streaming")
    def drip():
        yield 1
        time.sleep(1.0)
        yield 2

    stream, slow = drip.remote(), nap.remote(60)
    prompt = scheduling.PromptWait(ray)
    try:
        ready, _, took = timed_wait(prompt.wait, [stream, slow], timeout=10.0)
        assert ready == [stream] and took < 5.0
        assert ray.get(next(stream)) == 1  # the loop takes the output...
        ready, _, took = timed_wait(prompt.wait, [stream, slow], timeout=10.0)
        assert ready == [stream] and took < 5.0  # ...so the next one is new (about 1 s later)
        ready, _, took = timed_wait(prompt.wait, [stream, slow], timeout=2.0)
        assert ready == [stream] and took >= 1.9  # not taken: not new
        assert ray.get(next(stream)) == 2
    finally:
        ray.cancel(slow, force=True)


def task_ends(ray_cluster, seconds: list[float]) -> list[float]:
    """When each of ``len(seconds)`` one-CPU Ray Data tasks, sleeping that long, ended."""

    def work(batch):
        time.sleep(seconds[int(batch["i"][0])])
        return {"i": batch["i"], "end": [time.time()]}

    n = len(seconds)
    ds = ray_cluster.data.from_items([{"i": i} for i in range(n)], override_num_blocks=n)
    end = {r["i"]: r["end"] for r in ds.map_batches(work, batch_size=1, num_cpus=1).take_all()}
    return [end[i] for i in range(n)]


def cluster_shares(ray_cluster) -> dict[str, float]:
    """The datasets and Train runs holding a share of the cluster in Ray's autoscaling
    coordinator, which divides the cluster's CPUs among them: ``{requester: seconds until its
    share lapses}`` (live ones renew theirs; none before any dataset or run asked)."""
    try:
        coordinator = ray_cluster.get_actor("AutoscalingCoordinator", namespace="AutoscalingCoordinator")
    except ValueError:
        return {}

    def table(actor) -> dict[str, float]:
        with actor._lock:
            actor._purge_expired_requests()  # what its tick does every few seconds
            now = actor._get_current_time()
            return {str(k): round(r.expiration_time - now, 1) for k, r in actor._ongoing_reqs.items()}

    return ray_cluster.get(coordinator.__ray_call__.remote(table))


def no_dataset_holds_a_share(ray_cluster) -> None:
    """Wait until no dataset or Train run of an earlier test (killed there) holds a share of the
    cluster (a killed driver's Train run books its workers' CPUs ahead of every dataset)."""
    try:
        seconds = 1.5 * scheduling.TRAIN_RESERVATION_EXPIRY_S
        wait_for(lambda: not cluster_shares(ray_cluster), seconds, "shares")
    except AssertionError as err:
        raise AssertionError(f"{err}: {cluster_shares(ray_cluster)}") from None


def short_tasks_left_when_the_long_one_ends(ray_cluster, **settings) -> int:
    """How many of four 0.3 s tasks queued behind a 6 s one (on the 2-CPU cluster, the loop's wait
    timeout at 2 s) had not ended when it did: none if each free CPU gets the next task at once."""
    no_dataset_holds_a_share(ray_cluster)  # else this one gets part of the 2 CPUs
    task_ends(ray_cluster, [1.0, 1.0])  # two worker processes up, so none starts during the count
    before = scheduling.apply(**{**settings, "wait_s": 2.0})
    try:
        end = task_ends(ray_cluster, [0.3, 6.0, 0.3, 0.3, 0.3, 0.3])
    finally:
        scheduling.apply(**before)
    return sum(e > end[1] for e in end[2:])


def test_ray_data_hands_a_free_cpu_the_next_task_at_once_not_after_its_wait(ray_cluster):
    assert short_tasks_left_when_the_long_one_ends(ray_cluster) == 0
    ray_own = {"metadata_on_thread": True, "prompt_wait": False}  # Ray's wait and metadata thread
    assert short_tasks_left_when_the_long_one_ends(ray_cluster, **ray_own) >= 2


def test_a_killed_datasets_share_of_the_cluster_lapses_after_the_expiry(ray_cluster):
    """Ray Data divides the cluster among the datasets executing at once; a dataset whose process
    is killed keeps its share until it lapses (Ray's 180 s: the next dataset then ran one task at
    a time on 2 CPUs; ours :data:`RESERVATION_EXPIRY_S`, set to 12 s here)."""

    @ray_cluster.remote(num_cpus=0)
    class Reader:
        def read(self) -> None:
            scheduling.apply(reservation_expiry_s=12)
            rows = ray_cluster.data.range(400, override_num_blocks=200)
            slow = rows.map_batches(lambda b: time.sleep(0.2) or b, num_cpus=0.5)
            for _ in slow.iter_batches(batch_size=1):
                pass

    no_dataset_holds_a_share(ray_cluster)
    reader = Reader.remote()
    reader.read.remote()
    wait_for(lambda: len(cluster_shares(ray_cluster)) == 1, 60, "the reader's dataset to take a share")
    ray_cluster.kill(reader)
    killed = time.monotonic()
    time.sleep(3)
    assert len(cluster_shares(ray_cluster)) == 1  # the dead dataset still holds its share
    lapsed = wait_for(lambda: not cluster_shares(ray_cluster) and time.monotonic(), 30, "the lapse")
    print(f"the killed dataset's share lapsed {lapsed - killed:.1f} s after the kill")
    assert lapsed - killed <= 12 + 1
