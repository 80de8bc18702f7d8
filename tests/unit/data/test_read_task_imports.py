"""A read task's process whose ``import torch`` was cut short ends itself, so Ray retries the task.

Ray cancels running read tasks when a Train run restarts its workers; the cancel is a
``KeyboardInterrupt`` wherever the task is. In the node-loss test under load it landed inside the
first ``import torch`` of a task, and every later task Ray placed in that process failed to
import torch, until the run had used up its restarts. Each case runs in a fresh interpreter and
cuts the import exactly there, with an import hook that raises when torch reaches
``torch._meta_registrations`` (part-way through its start-up).
"""

from __future__ import annotations

import subprocess
import sys

from pipelines.data.read_tasks import HALF_IMPORTED_EXIT
from tests.helpers.runs import ROOT

CUT = """
import sys

class Cut:
    armed = True
    def find_spec(self, name, path=None, target=None):
        if Cut.armed and name == "{module}":
            Cut.armed = False
            raise {error}
        return None

sys.meta_path.insert(0, Cut())
"""


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_read_task_cancelled_inside_its_torch_import_ends_its_process():
    code = CUT.format(module="torch._meta_registrations", error="KeyboardInterrupt('cancel')") + (
        "from pipelines.data.read_tasks import load_crop_views\nload_crop_views()\nprint('still alive')\n"
    )
    proc = run(code)
    assert proc.returncode == HALF_IMPORTED_EXIT and "still alive" not in proc.stdout, proc.stderr[-2000:]


def test_a_process_left_with_a_half_imported_torch_ends_at_the_next_read_task():
    code = CUT.format(module="torch._meta_registrations", error="KeyboardInterrupt('cancel')") + (
        "try:\n"
        "    import torch\n"
        "except KeyboardInterrupt:\n"
        "    print('cut short')\n"
        "from pipelines.data.read_tasks import load_crop_views\n"
        "load_crop_views()\n"
        "print('still alive')\n"
    )
    proc = run(code)
    assert "cut short" in proc.stdout
    assert proc.returncode == HALF_IMPORTED_EXIT and "still alive" not in proc.stdout, proc.stderr[-2000:]
    assert "cut short mid-import in this process" in proc.stderr


def test_a_broken_torch_in_a_clean_process_is_an_error_not_an_endless_retry():
    code = CUT.format(module="torch", error="ImportError('no torch here')") + (
        "from pipelines.data.read_tasks import load_crop_views\nload_crop_views()\n"
    )
    proc = run(code)
    assert proc.returncode == 1 and "ImportError: no torch here" in proc.stderr
