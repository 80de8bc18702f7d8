"""How `make test` runs the suite: e2e alone first, the rest in whole files over two processes."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import LONGEST_FILES, run_order

ROOT = Path(__file__).resolve().parents[3]


def test_the_longest_files_exist_and_e2e_comes_before_everything() -> None:
    for path in LONGEST_FILES:
        assert (ROOT / path).is_file(), f"{path} was moved: update LONGEST_FILES in tests/conftest.py"
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py"))
    order = sorted(files, key=run_order)
    e2e = [f for f in files if f.startswith("tests/e2e/")]
    assert e2e and order[: len(e2e)] == e2e
    assert order[len(e2e) : len(e2e) + len(LONGEST_FILES)] == list(LONGEST_FILES)
    assert order[-1].startswith("tests/unit/")


def test_make_test_runs_e2e_alone_then_whole_files_in_parallel() -> None:
    recipe = re.search(r"^test: .*?\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert recipe, "no test target in the Makefile"
    commands = [c for c in recipe.group(1).replace("\\\n", " ").split("\n") if c.strip()]
    assert len(commands) == 2
    first, second = (c.split() for c in commands)
    assert first[-1] == "tests/e2e" and "-n" not in first  # its `ray stop` must not meet other tests
    assert "tests" in second and "--ignore=tests/e2e" in second  # every other test, e2e once
    assert second[second.index("--dist") + 1] == "loadfile"  # a module's shared run is built once
    assert "-n" in second
