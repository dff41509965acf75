"""The docs live in the repository: no pointer to a file outside it, every docs/ link and anchor resolves, and
BENCHMARKS.md opens with its summary table."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ["tda_clean", "flows", "tests", "benchmarks", "configs", "docs", "README.md", "BENCHMARKS.md", "Makefile",
           "pyproject.toml"]
# notes kept outside the repository during development; built from parts so this file does not match itself
OUTSIDE = ["METHODS" + ".md", "STACK" + ".md", "DESIGN" + ".md", "shared" + "/"]
DOC_LINK = re.compile(r"docs/([a-z_]+\.md)(?:#([a-z0-9-]+))?")


def _files() -> list[Path]:
    out = []
    for name in SCANNED:
        path = ROOT / name
        if path.is_file():
            out.append(path)
        elif path.is_dir():
            out += [p for p in path.rglob("*") if p.suffix in (".py", ".md", ".yaml", ".yml", ".sh") and p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(ROOT).parts)]
    return out


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(md: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in md.read_text(encoding="utf-8").splitlines() if line.startswith("#")}


def test_slug_matches_github():
    assert slug("Influence engine (issue 3)") == "influence-engine-issue-3"
    assert slug("Goals, honestly") == "goals-honestly"
    assert slug("report.json") == "reportjson"


def test_no_reference_to_files_outside_the_repository():
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in _files()
            for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
            if any(s in line for s in OUTSIDE)]
    assert hits == []


def test_docs_links_and_anchors_resolve():
    broken = []
    for p in _files():
        for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for page, anchor in DOC_LINK.findall(line):
                target = ROOT / "docs" / page
                if not target.is_file() or (anchor and anchor not in anchors(target)):
                    broken.append(f"{p.relative_to(ROOT)}:{i}: docs/{page}#{anchor}")
    assert broken == []


@pytest.mark.parametrize("md", ["BENCHMARKS.md", "docs/README.md", "docs/architecture.md", "docs/methods.md",
                                "docs/stack.md"])
def test_in_page_and_sibling_links_resolve(md):
    page = ROOT / md
    broken = []
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", page.read_text(encoding="utf-8")):
        if target.startswith("http"):
            continue
        dest = (page.parent / target) if target else page
        if not dest.exists() or (anchor and anchor not in anchors(dest)):
            broken.append(f"{target}#{anchor}")
    assert broken == []


def test_benchmarks_opens_with_the_summary_table():
    lines = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8").splitlines()
    first_section = next(line for line in lines if line.startswith("## "))
    assert first_section == "## Summary"
    header = next(line for line in lines if line.startswith("| area |"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "area", "method", "data", "figure", "goal", "met?", "command → section"]
    rows = []
    for line in lines[lines.index(header) + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    assert 10 <= len(rows) <= 30  # one screen
    # seven cells each, and a command or section link unless the row says there is no run ("–")
    assert [r for r in rows if r.count("|") != 8 or not ("](" in r or r.endswith("| – |"))] == []
