"""The benchmark scripts name only project code that exists: every ``from pipelines... import x``,
``from objectives... import x`` and ``from benchmarks... import x`` in ``benchmarks/*.py`` (at the
top or inside functions) resolves.

The benchmarks run by hand (minutes each), so nothing else notices when a name they import moves.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))
PROJECT = ("pipelines", "objectives", "benchmarks")  # benchmarks: their shared helpers


def project_imports(script: Path) -> list[tuple[int, str, str | None]]:
    """``(line, module, name)`` of every import of project code in ``script`` (``name`` is
    ``None`` for ``import module``)."""
    found: list[tuple[int, str, str | None]] = []
    for node in ast.walk(ast.parse(script.read_text(), filename=str(script))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in PROJECT:
                found += [(node.lineno, node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, None) for a in node.names if a.name.split(".")[0] in PROJECT]
    return found


def test_every_benchmark_script_is_found() -> None:
    assert {p.name for p in SCRIPTS} >= {"data.py", "train_overhead.py", "tune.py", "gpu_pretrain.py"}


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_the_project_names_a_benchmark_imports_exist(script: Path) -> None:
    missing = []
    for line, module, name in project_imports(script):
        try:
            loaded = importlib.import_module(module)
        except ImportError as err:
            missing.append(f"{script.name}:{line}: {module}: {err}")
            continue
        if name is None or hasattr(loaded, name):
            continue
        try:  # a submodule: from pipelines.core import checkpoints
            importlib.import_module(f"{module}.{name}")
        except ImportError:
            missing.append(f"{script.name}:{line}: {module} has no {name}")
    assert not missing, "\n".join(missing)


def test_the_gpu_benchmark_composes_its_preset_in_a_fresh_process() -> None:
    """It runs once, on a lent GPU machine: its config must compose there without the test session's
    set-up (the typed schemas registered by ``tests/conftest.py``)."""
    code = (
        "import sys; sys.path.insert(0, 'benchmarks'); import gpu_pretrain; "
        "cfg = gpu_pretrain.compose('trainer.use_gpu=false'); "
        "print(cfg['experiment_name'], cfg['framework']['name'], cfg['objective']['name'])"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["imagenet100_moco_v2_cacr", "moco_v2", "cacr_moco_v2"]
