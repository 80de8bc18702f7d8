"""The layers of docs/architecture.md run one way, with no cycles and imports at the top of files.

Every import of a project module is read from the source (``ast``), lazy ones inside functions
included, so an upward import cannot hide in a function body.
"""

from __future__ import annotations

import ast
import pathlib
import sys
from collections import defaultdict

ROOT = pathlib.Path(__file__).resolve().parents[3]

# Lowest first. A module may import its own package and any package of a lower layer; packages of
# the same layer never import each other.
LAYERS: list[list[str]] = [
    ["objectives"],
    ["pipelines.core"],  # checkpoint format, errors, run-folder file names, storage and URIs
    ["pipelines.data", "pipelines.models"],
    ["pipelines.evaluation"],  # a library: judging an encoder, no drivers
    ["pipelines.config", "pipelines.ray_session"],
    ["pipelines.training", "pipelines.probe"],
    ["pipelines.search"],
    ["pipelines.studies"],  # the paper's tables: studies run as searches
    [
        "pipelines.pretrain",
        "pipelines.tune",
        "pipelines.linear_probe",
        "pipelines.prepare",
        "pipelines.export_backbone",
        "pipelines.study",
    ],
]

# Third-party imports that may stay inside functions, and why (the import-weight tests).
LAZY_ALLOWED = {
    "ray": "every data-plan module is unpickled in Ray's own processes; entry points check configs first",
    "torchvision": "pulls in torch._dynamo (~1.5 CPU-s per process); only networks from it need it",
    "matplotlib": "only the report figures need it",
    "torch": "the data plan unpickles without torch (read tasks import it when they first run)",
    "scipy": "only the ImageNet devkit reader needs it, and the data plan is unpickled everywhere",
}
# Project imports that may stay inside functions: the read task's augmentation needs torch.
LAZY_PROJECT_ALLOWED = {("pipelines.data.read_tasks", "pipelines.data.augment")}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in [*ROOT.glob("objectives/**/*.py"), *ROOT.glob("pipelines/**/*.py")]:
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _resolve(target: str) -> str | None:
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def imports_of(name: str, path: pathlib.Path) -> list[tuple[str, bool, int]]:
    """``(project module, at top level, line)`` for every project import in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in ("objectives", "pipelines"):
                module = _resolve(target)
                if module and module != name:
                    found.append((module, id(node) in top, node.lineno))
    return found


def package_of(module: str) -> str:
    for layer in LAYERS:
        for package in layer:
            if module == package or module.startswith(package + "."):
                return package
    if module == "pipelines":
        return "pipelines"
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS (and docs/architecture.md)")


def rank_of(package: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if package in layer)


def layer_violations(edges: dict[str, list[tuple[str, bool, int]]]) -> list[str]:
    """Every import that goes up a layer or sideways to another package of the same layer."""
    bad = []
    for module, targets in edges.items():
        here = package_of(module)
        for target, _, line in targets:
            there = package_of(target)
            if there != here and rank_of(there) >= rank_of(here):
                bad.append(f"{MODULES[module].relative_to(ROOT)}:{line} imports {target} ({here} -> {there})")
    return bad


def cycles(edges: dict[str, list[tuple[str, bool, int]]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    graph = {m: sorted({t for t, _, _ in ts}) for m, ts in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


EDGES = {name: imports_of(name, path) for name, path in MODULES.items()}


def test_every_project_module_sits_in_a_layer():
    for module in MODULES:
        package_of(module)


def test_imports_only_go_down_the_layers():
    bad = layer_violations(EDGES)
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


def test_no_import_cycles_between_modules():
    found = cycles(EDGES)
    assert not found, f"import cycles: {found}"


def test_project_imports_sit_at_the_top_of_files():
    lazy = [
        f"{MODULES[m].relative_to(ROOT)}:{line} imports {t} inside a function"
        for m, ts in EDGES.items()
        for t, at_top, line in ts
        if not at_top and (m, t) not in LAZY_PROJECT_ALLOWED
    ]
    assert not lazy, "\n".join(lazy)


def test_third_party_imports_inside_functions_are_the_allowed_heavy_ones():
    stdlib = set(sys.stdlib_module_names)
    found = defaultdict(list)
    for path in MODULES.values():
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if (
                not isinstance(node, ast.Import | ast.ImportFrom)
                or id(node) in top
                or getattr(node, "level", 0)
            ):
                continue
            name = node.names[0].name if isinstance(node, ast.Import) else node.module or ""
            root = name.split(".")[0]
            if root not in LAZY_ALLOWED and root not in ("objectives", "pipelines"):
                found[root].append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, f"move these imports to the top of their files: {dict(found)}"
    assert not stdlib & set(LAZY_ALLOWED)


# ---------------------------------------------------------------- the checks can fail


def test_the_layer_check_refuses_an_upward_and_a_sideways_import():
    edges = {
        "pipelines.data.loader": [("pipelines.training.run", False, 7)],
        "pipelines.models.build": [("pipelines.data.recipes", True, 3)],
        "pipelines.training.run": [("pipelines.data.loader", True, 1)],
    }
    bad = layer_violations(edges)
    assert len(bad) == 2
    assert "pipelines.data -> pipelines.training" in bad[0]
    assert "pipelines.models -> pipelines.data" in bad[1]


def test_the_cycle_check_finds_a_cycle_through_a_lazy_import():
    edges = {
        "pipelines.training.pretrainer": [("pipelines.training.session", False, 9)],
        "pipelines.training.session": [("pipelines.training.pretrainer", True, 2)],
        "pipelines.training.run": [("pipelines.training.session", True, 2)],
    }
    assert cycles(edges) == [["pipelines.training.pretrainer", "pipelines.training.session"]]


def test_lazy_project_imports_are_read_from_function_bodies(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("import os\n\ndef f():\n    from pipelines.training import run\n    return run\n")
    assert imports_of("pipelines.evaluation.probe", source) == [("pipelines.training.run", False, 4)]
