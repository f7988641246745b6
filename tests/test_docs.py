"""The Markdown documentation: every relative link resolves, the README stays short.

Parses every ``*.md`` at the repository root and under ``docs/`` and ``infra/``: each relative
link (``[text](path)``, ``![alt](path)``, ``[label]: path``) must name a file or folder that
exists, and each ``#anchor`` a heading of its target (GitHub's slugs) or an explicit
``<a id=...>``/``<a name=...>``. No document may carry a path of one machine (``/work/...``,
``/root/...``, ``/home/...``, ``/tmp/...``; ``/tmp/ci-check`` and ``/tmp/shared`` are the
documented exceptions).
"""

from __future__ import annotations

import importlib.util
import re
import unicodedata
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pytest
from conftest import ROOT

pytestmark = pytest.mark.spark4

#: Folders never searched for documents: environments, caches, generated work directories.
SKIP_DIRS = frozenset(
    {"bench-workdir", "demo-workdir", "results-workdir", "node_modules", ".cache", ".git"}
)
README_MAX_BYTES = 20_000

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
# a code span: a run of backticks, its text (never a blank line), the same run
_INLINE_CODE = re.compile(r"(`+)((?:(?!\n[ \t]*\n).)+?)\1", re.DOTALL)
# [text](target) or ![alt](target "title"); the text may hold [brackets] and line breaks
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:[ \t]*<?(\S+?)>?(?:[ \t]+.*)?$", re.MULTILINE)
_HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"", re.IGNORECASE)
_MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|root|home|tmp)\b(?:/[^\s`'\")\]<>]*)?")
_ALLOWED_PATHS = ("/tmp/ci-check", "/tmp/shared")


def markdown_files(root: Path = ROOT) -> list[Path]:
    """The repository's documents: ``*.md`` at the root, and under ``docs/`` and ``infra/``."""
    found = sorted(root.glob("*.md"))
    for top in ("docs", "infra"):
        for path in sorted((root / top).rglob("*.md")):
            parts = path.relative_to(root).parts[:-1]
            if any(p in SKIP_DIRS or p.startswith(".venv") for p in parts):
                continue
            found.append(path)
    return found


def prose_lines(text: str) -> list[tuple[int, str]]:
    """The lines outside fenced code blocks, numbered from 1."""
    out: list[tuple[int, str]] = []
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * len(m.group(1))
        elif fence is not None and m and m.group(1).startswith(fence):
            fence = None
        elif fence is None:
            out.append((number, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: links and code reduced to their text, lower
    case, punctuation dropped (``-`` and ``_`` kept), each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = _INLINE_CODE.sub(lambda m: m.group(2), text)
    text = re.sub(r"<[^>]+>", "", text)
    text = text.strip().lower()
    kept = "".join(
        ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in ("L", "N", "M")
    )
    return kept.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a document offers: its headings' slugs (a repeated one numbered as
    GitHub does: ``x``, ``x-1``, ``x-2``) and explicit HTML anchors."""
    seen: Counter[str] = Counter()
    found: set[str] = set()
    for _, line in prose_lines(text):
        m = _HEADING.match(line)
        if m:
            base = slug(m.group(2))
            found.add(base if not seen[base] else f"{base}-{seen[base]}")
            seen[base] += 1
        found.update(_HTML_ANCHOR.findall(line))
    return found


def links(text: str) -> list[tuple[int, str]]:
    """The link targets of a document's prose (not of code), with their line numbers."""
    lines = text.splitlines()
    prose = dict(prose_lines(text))
    # code blocks blanked and code spans masked, line breaks kept (for the line numbers)
    bare = "\n".join(prose.get(n, "") for n in range(1, len(lines) + 1))
    bare = _INLINE_CODE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), bare)
    found = sorted([*_LINK.finditer(bare), *_REF_DEF.finditer(bare)], key=lambda m: m.start())
    return [(bare.count("\n", 0, m.start()) + 1, m.group(1)) for m in found]


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line: target (why)`` for each relative link of ``path`` that does not resolve."""
    problems = []
    rel = path.relative_to(root)
    for number, target in links(path.read_text(encoding="utf-8")):
        if not target or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
            continue  # https:, mailto:, ... are not checked here
        where, _, anchor = target.partition("#")
        if where.startswith("/"):
            problems.append(f"{rel}:{number}: {target} (absolute, not relative)")
            continue
        dest = (path.parent / unquote(where)).resolve() if where else path
        if not dest.exists():
            problems.append(f"{rel}:{number}: {target} (no such file)")
        elif (
            anchor
            and dest.is_file()
            and dest.suffix.lower() == ".md"
            and unquote(anchor).lower() not in anchors(dest.read_text(encoding="utf-8"))
        ):
            problems.append(f"{rel}:{number}: {target} (no heading #{anchor} in {dest.name})")
    return problems


def machine_paths(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line: path`` for each absolute path of one machine in the document."""
    rel = path.relative_to(root)
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        for m in _MACHINE_PATH.finditer(line):
            machine_path = m.group(0).rstrip(".,;:!?")
            if not machine_path.startswith(_ALLOWED_PATHS):
                found.append(f"{rel}:{number}: {machine_path}")
    return found


DOCS = markdown_files()


def test_the_documents_are_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in DOCS}
    assert {"README.md", "docs/library.md", "infra/README.md"} <= names
    assert not any(".venv" in n or "workdir" in n for n in names)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_and_anchor_resolves(doc: Path) -> None:
    assert broken_links(doc) == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_document_names_a_path_of_one_machine(doc: Path) -> None:
    assert machine_paths(doc) == []


def test_the_readme_is_short_and_keeps_the_two_commands() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    assert readme.stat().st_size < README_MAX_BYTES
    assert "make demo" in text
    assert "make test" in text


def test_the_generated_benchmark_block_lives_in_docs_benchmarks() -> None:
    """``benchmarks/report.py --readme`` fills docs/benchmarks.md, not the README."""
    spec = importlib.util.spec_from_file_location(
        "_bench_report", ROOT / "benchmarks" / "report.py"
    )
    assert spec and spec.loader
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    bench = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert bench.count(report.START) == 1 and bench.count(report.END) == 1
    assert bench.index(report.START) < bench.index(report.END)
    assert report.START not in (ROOT / "README.md").read_text(encoding="utf-8")
    assert report.DEFAULT_TARGET == "docs/benchmarks.md"


def test_the_checker_finds_what_it_should(tmp_path: Path) -> None:
    """A broken file link, a missing anchor and a machine path are each reported; headings
    in code blocks are not anchors, links in code are not links."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text(
        "# Title\n\n## Exit codes and refusals\n\n## Run `prodclf tag`, again!\n\n"
        "## Twice\n\n## Twice\n\n```bash\n# not a heading\n[x](nowhere.md)\n```\n"
    )
    good = (
        "[a](docs/a.md) [b](docs/a.md#exit-codes-and-refusals) [c](docs/a.md#run-prodclf-tag-again)"
        " [d](docs/a.md#twice-1) [e](#top) [f](https://example.com/x) `[g](no.md)`\n\n"
        '<a id="top"></a>\n[ref]: docs/a.md#title\n'
    )
    (tmp_path / "README.md").write_text(good)
    assert broken_links(tmp_path / "README.md", tmp_path) == []
    assert broken_links(tmp_path / "docs" / "a.md", tmp_path) == []

    (tmp_path / "README.md").write_text(
        good + "[h](docs/gone.md) [i](docs/a.md#not-a-heading) [j](#twice)\n"
        "Built in /work/main, cached in /tmp/x; /tmp/ci-check and /tmp/shared are fine.\n"
    )
    problems = broken_links(tmp_path / "README.md", tmp_path)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "docs/gone.md (no such file)",
        "docs/a.md#not-a-heading (no heading #not-a-heading in a.md)",
        "#twice (no heading #twice in README.md)",
    ]
    assert [p.split(": ", 1)[1] for p in machine_paths(tmp_path / "README.md", tmp_path)] == [
        "/work/main",
        "/tmp/x",
    ]
