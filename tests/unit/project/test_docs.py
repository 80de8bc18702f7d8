"""The README and docs/: the README stays small, links resolve, nothing points outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_BYTES = 12_288  # the house rule: README.md at most 12 KB

# [text](target) and [text](target "title"); images too. Targets with a scheme are external.
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
FENCE = re.compile(r"^\s*(```|~~~)")


def doc_files() -> list[Path]:
    """Every docs/*.md file."""
    return sorted(DOCS.glob("*.md"))


def markdown_files() -> list[Path]:
    """README.md and every docs/*.md file."""
    return [README, *doc_files()]


def prose(text: str) -> str:
    """``text`` without fenced code blocks (shell examples hold brackets that are not links)."""
    kept, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            kept.append(line)
    return "\n".join(kept)


def relative_links(text: str) -> list[str]:
    """Targets of the Markdown links in ``text`` that are paths (no scheme, not a bare ``#anchor``)."""
    targets = (m.group(1) for m in LINK.finditer(prose(text)))
    return [t for t in targets if not SCHEME.match(t) and not t.startswith("#")]


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """The relative links of the Markdown file ``path`` that name no existing file under ``root``."""
    broken = []
    for target in relative_links(path.read_text(encoding="utf-8")):
        file_part = target.split("#", 1)[0].split("?", 1)[0]
        resolved = (path.parent / file_part).resolve()
        if not resolved.is_relative_to(root.resolve()) or not resolved.is_file():
            broken.append(target)
    return broken


def outside_pointers(text: str) -> list[str]:
    """Pieces of ``text`` that point outside the repository: ``../shared`` or an absolute ``/work/`` path."""
    return re.findall(r"\.\./shared\S*|(?<![\w.:/])/work/\S*", text)


def unlinked_docs(readme: Path, docs: list[Path]) -> list[str]:
    """Names of the ``docs`` files that ``readme`` does not link to."""
    targets = relative_links(readme.read_text(encoding="utf-8"))
    linked = {(readme.parent / t.split("#", 1)[0]).resolve() for t in targets}
    return [p.name for p in docs if p.resolve() not in linked]


def too_big(path: Path) -> bool:
    """Whether ``path`` is over the README limit."""
    return path.stat().st_size > README_MAX_BYTES


def test_readme_is_at_most_12_kb() -> None:
    assert not too_big(README), f"README.md is {README.stat().st_size} bytes; the limit is {README_MAX_BYTES}"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_to_a_file(path: Path) -> None:
    assert broken_links(path) == [], f"{path.relative_to(ROOT)}: links to nothing"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_points_outside_the_repository(path: Path) -> None:
    assert outside_pointers(path.read_text(encoding="utf-8")) == []


def test_every_docs_file_is_linked_from_the_readme() -> None:
    assert doc_files(), "docs/ holds no Markdown file"
    assert unlinked_docs(README, doc_files()) == [], "docs not linked from README.md"


def test_each_check_fails_on_what_it_is_for(tmp_path: Path) -> None:
    """A large README, a dead link, a path out of the tree, ../shared and an unlinked doc are all caught."""
    big = tmp_path / "README.md"
    big.write_bytes(b"x" * (README_MAX_BYTES + 1))
    assert too_big(big)
    big.write_bytes(b"x" * README_MAX_BYTES)
    assert not too_big(big)

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n")
    (docs / "b.md").write_text("# B\n")
    (tmp_path / "outside.md").write_text("# out\n")
    page = docs / "page.md"
    page.write_text(
        "[ok](a.md#top) [dead](missing.md) [up](../outside.md) [out](../../x.md) "
        "[web](https://docs.ray.io) [here](#local)\n```\n[code](not-a-link.md)\n```\n"
    )
    assert relative_links(page.read_text()) == ["a.md#top", "missing.md", "../outside.md", "../../x.md"]
    assert broken_links(page, root=tmp_path) == ["missing.md", "../../x.md"]

    readme = tmp_path / "README.md"
    readme.write_text("[a](docs/a.md#x)\n")
    assert unlinked_docs(readme, [docs / "a.md", docs / "b.md"]) == ["b.md"]

    assert outside_pointers("see ../shared/spec.md or /work/main/x") == ["../shared/spec.md", "/work/main/x"]
    assert outside_pointers("https://example.org/work/x and docs/work/x") == []
