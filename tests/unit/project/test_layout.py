"""House rules of DESIGN.md that a refactor could silently break."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[3]


def _installed_top_level_names() -> set[str]:
    return set(importlib.metadata.packages_distributions())


# `pipelines/tune.py` is the entry point DESIGN.md and the Tune issue name. It is safe only while no
# installed distribution provides a top-level `tune` and nothing imports one (Ray Tune is always
# `ray.tune`); the two tests below keep that true.
SANCTIONED_ENTRY_POINTS = {"tune"}


def test_no_module_directly_in_pipelines_shadows_a_standard_or_installed_module():
    taken = set(sys.stdlib_module_names) | _installed_top_level_names() | SANCTIONED_ENTRY_POINTS
    taken -= {"pipelines", "objectives"}
    shadowing = []
    for entry in (ROOT / "pipelines").iterdir():
        stem = entry.stem if entry.suffix == ".py" else entry.name if entry.is_dir() else None
        if stem and not stem.startswith("__") and stem in taken and entry.name != "tune.py":
            shadowing.append(entry.name)
    assert not shadowing, f"these shadow standard or installed modules: {shadowing}"


def test_the_shadow_check_knows_the_names_it_must_refuse():
    taken = set(sys.stdlib_module_names) | _installed_top_level_names() | SANCTIONED_ENTRY_POINTS
    assert {"platform", "queue", "logging", "types", "ray", "torch", "hydra", "tune"} <= taken


def test_the_tune_entry_point_shadows_nothing_that_is_imported():
    assert "tune" not in _installed_top_level_names()  # no distribution ships a top-level `tune`
    pattern = re.compile(r"^\s*(import tune\b|from tune(\.\w+)* import\b)", re.M)
    sources = [*ROOT.glob("pipelines/**/*.py"), *ROOT.glob("objectives/**/*.py"), *ROOT.glob("tests/**/*.py")]
    assert not [str(p) for p in sources if pattern.search(p.read_text())]
    ray_tune = pathlib.Path(importlib.util.find_spec("ray").origin).parent
    importers = [
        str(p) for p in ray_tune.rglob("*.py") if "/tests/" not in str(p) and pattern.search(p.read_text())
    ]
    assert not importers, importers  # Ray itself imports Tune only as ray.tune


def test_platform_is_not_a_python_package():
    assert (ROOT / "platform").is_dir()
    assert not (ROOT / "platform" / "__init__.py").exists()


def test_importing_objectives_pulls_in_neither_ray_nor_hydra():
    code = (
        "import json, sys; import objectives; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert "objectives" in loaded and "torch" in loaded
    assert not loaded & {"ray", "hydra", "omegaconf", "torchvision", "pipelines", "pyarrow"}


def test_objectives_source_imports_only_torch_the_stdlib_and_itself():
    allowed = set(sys.stdlib_module_names) | {"torch", "objectives"}
    for path in (ROOT / "objectives").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module or ""]
            else:
                continue
            for mod in mods:
                assert mod.split(".")[0] in allowed, f"{path.name} imports {mod}"
