"""Where a machine's CPU goes while a benchmark runs: CPU seconds per kind of process (Linux ``/proc``)."""

from __future__ import annotations

import os
import pathlib
import threading
import time

KINDS = [  # (substring of the command line, kind), first match wins; Ray renames its workers once started
    ("RayTrainWorker", "Ray Train workers"),
    ("TrainController", "Ray Train controllers"),
    ("DatasetManager", "Ray Train helper actors"),
    ("SynchronizationActor", "Ray Train helper actors"),
    ("SplitCoordinator", "Ray Data split coordinators"),
    ("MapBatches", "Ray Data read tasks"),
    ("ImplicitFunc", "Tune trial actors"),
    ("DataMonitor", "run monitors"),
    ("PreemptionWatcher", "preemption watchers"),
    ("pipelines/tune.py", "search driver"),
    ("raylet/raylet", "raylet"),  # its arguments name default_worker.py: before that pattern
    ("DashboardAgent", "dashboard and its agents"),
    ("dashboard", "dashboard and its agents"),
    ("default_worker", "other ray workers (idle, starting)"),  # before Ray renames the process
    ("ray::", "other ray workers (idle, starting)"),
    ("gcs_server", "GCS"),
    ("log_monitor", "log monitor"),
    ("autoscaler", "autoscaler monitor"),
    ("runtime_env", "runtime_env agent"),
    ("train_overhead.py", "benchmark (driver / plain workers)"),
    ("multiprocessing", "benchmark (driver / plain workers)"),
]


class CpuSampler:
    """Samples every process's CPU seconds (``/proc/<pid>/stat``) in a thread, by process kind.

    :meth:`used` gives the CPU seconds each kind of process spent inside a wall-clock window
    (the timed steps), which is where a Ray round's missing speed goes on a small machine.
    """

    def __init__(self, every_s: float = 0.25) -> None:
        self.every_s, self.samples, self.kinds = every_s, [], {}
        self.tick = os.sysconf("SC_CLK_TCK")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def kind(pid: str) -> str:
        try:
            cmd = (
                pathlib.Path(f"/proc/{pid}/cmdline")
                .read_bytes()
                .replace(b"\0", b" ")
                .decode(errors="replace")
            )
        except OSError:
            return "gone"
        for pattern, name in KINDS:
            if pattern in cmd:
                return name
        return "other"

    def _run(self) -> None:
        while not self._stop.is_set():
            now, cpu = time.time(), {}
            for entry in pathlib.Path("/proc").iterdir():
                if entry.name.isdigit():
                    try:
                        fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                        cpu[entry.name] = (int(fields[11]) + int(fields[12])) / self.tick
                        self.kinds[entry.name] = self.kind(entry.name)  # Ray renames its workers once started
                    except (OSError, IndexError):
                        pass
            self.samples.append((now, cpu))
            time.sleep(self.every_s)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def used(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds per process kind between the samples nearest ``start`` and ``end``."""
        first = min(self.samples, key=lambda s: abs(s[0] - start))[1]
        last = min(self.samples, key=lambda s: abs(s[0] - end))[1]
        out: dict[str, float] = {}
        for pid, total in last.items():
            k = self.kinds.get(pid, "other")
            out[k] = out.get(k, 0.0) + total - first.get(pid, 0.0)
        return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v > 0.005}
