"""The user-facing documentation stays true: generated tables are current, cited files exist.

Fast and without Ray: the field tables are rendered from the schemas in-process
(``dist_core.docs``), the benchmark tables from ``bench/results/*.json`` (``bench/render.py``).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from dist_core import docs, kinds
from dist_core.specbase import JobBase, Strict

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A backticked token is taken for a repository path when its first part is one of these.
TOP = {"jobs", "docs", "bench", "cluster", "dist_core", "tests", "data", ".ci", "launch.py", "pyproject.toml",
       "README.md"}
FENCE = re.compile(r"^(```|~~~)\s*(\w*)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE = re.compile(r"(`+)(.+?)\1")


def cited(page: Path) -> list[tuple[int, str, Path]]:
    """(line, as written, resolved path) of every relative file a page cites.

    Markdown links (relative to the page), and in inline code spans and ``bash``/``sh``/``yaml`` blocks
    every token whose first path part is a top-level entry of the repository (relative to the
    root). Tokens with placeholders (``<stamp>``, ``{...}``) are skipped; ``*`` is a glob that must
    match something; a ``:line`` suffix (``jobs/x.yaml:14:``) is dropped.
    """
    out: list[tuple[int, str, Path]] = []
    lang = None
    for n, line in enumerate(page.read_text().splitlines(), 1):
        fence = FENCE.match(line.strip())
        if fence:
            lang = None if lang is not None else (fence.group(2) or "text")
            continue
        if lang is not None:
            if lang in ("bash", "sh", "shell", "console", "yaml"):
                out += [(n, tok, ROOT / tok) for tok in _repo_tokens(line)]
            continue
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL or an anchor on the same page
            rel = target.split("#", 1)[0]
            if rel:
                out.append((n, target, (page.parent / rel)))
        for _, code in CODE.findall(line):
            out += [(n, tok, ROOT / tok) for tok in _repo_tokens(code)]
    return out


def _repo_tokens(text: str) -> list[str]:
    toks = []
    for raw in re.split(r"[\s=,;()'\"]+", text):
        tok = re.sub(r":\d.*$", "", raw).rstrip(".:")
        if not tok or any(c in tok for c in "<>{}$~[]|") or tok.startswith(("-", "/", "http")):
            continue
        first = tok.split("/", 1)[0]
        if first in TOP and ("/" in tok or "." in first):
            toks.append(tok)
    return toks


def _exists(path: Path) -> bool:
    if "*" in str(path):
        return any(path.parent.glob(path.name)) if "*" not in str(path.parent) else any(ROOT.glob(
            str(path.relative_to(ROOT))))
    return path.exists()


def test_field_tables_are_current():
    stale = [str(p.relative_to(ROOT)) for p in docs.stale()]
    assert not stale, f"out of date: {', '.join(stale)}; run: python -m dist_core.docs"


def test_every_kind_has_a_page():
    missing = [k for k in kinds.names() if not docs.page(k).exists()]
    assert not missing, f"no docs/<kind>.md for {missing}; run: python -m dist_core.docs"


def test_bench_readme_is_current():
    sys.path.insert(0, str(ROOT))
    from bench import render

    assert not render.stale(), "bench/README.md is out of date; run: python bench/render.py"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_cited_files_exist(page: Path):
    missing = [f"{page.relative_to(ROOT)}:{n}: {shown}" for n, shown, path in cited(page) if not _exists(path)]
    assert not missing, "cited but missing:\n" + "\n".join(missing)


def test_citations_are_found():
    """The scanner sees the citations it is meant to check (a scanner that finds nothing passes everything)."""
    readme = {shown for _, shown, _ in cited(ROOT / "README.md")}
    assert {"jobs/quickstart.yaml", "docs/cluster.md", "bench/README.md"} <= readme
    cluster = {shown for _, shown, _ in cited(ROOT / "docs" / "cluster.md")}
    assert "cluster/local.sh" in cluster


def test_scanner_reports_a_missing_file(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("Run `python launch.py run jobs/nothere.yaml`; see [x](missing.md) and `bilevel.lower.lr`.\n"
                    "```\njobs/x.yaml:22: bilevel.lower.lr: must be > 0.0\n```\n")
    found = {shown: _exists(path) for _, shown, path in cited(page)}
    assert found == {"launch.py": True, "jobs/nothere.yaml": False, "missing.md": False}


# ---------------------------------------------------------------------------------------- generator
def test_a_newly_registered_kind_gets_a_page(tmp_path):
    """A kind registered with a schema of its own is listed as stale until its page is generated."""
    from typing import Annotated, Literal, Union

    from pydantic import Field

    class A(Strict):
        name: Literal["a"]
        iters: int = Field(3, ge=1, description="iterations")

    class B(Strict):
        name: Literal["b"]
        gamma: float = Field(1.0, gt=0.0, le=10.0)

    class Section(Strict):
        lr: float = Field(0.1, gt=0.0, description="a | step size")
        mode: Literal["x", "y"] = "x"
        method: Annotated[Union[A, B], Field(discriminator="name")] = Field(default_factory=lambda: A(name="a"))

    class ToyJob(JobBase):
        kind: Literal["toy_kind"]
        toy: Section = Field(default_factory=Section)

    import types as _types

    module = _types.ModuleType("dist_core_test_toy_kind")
    module.ToyJob = ToyJob
    sys.modules[module.__name__] = module
    kinds.register(kinds.Kind("toy_kind", f"{module.__name__}:ToyJob", "nowhere:run", needs_ray=False))
    try:
        assert tmp_path / "toy_kind.md" in docs.stale(tmp_path)
        assert tmp_path / "toy_kind.md" in docs.write(tmp_path)
        assert docs.stale(tmp_path) == []
        text = (tmp_path / "toy_kind.md").read_text()
        assert "| `toy.lr` | float | 0.1 | > 0.0 | a \\| step size |" in text
        assert "| `toy.mode` | str | x | one of `x`, `y` |  |" in text
        assert "#### `toy.method` with `name: a`" in text and "#### `toy.method` with `name: b`" in text
        assert "| `toy.method.gamma` | float | 1.0 | > 0.0; ≤ 10.0 |  |" in text
        # Prose around the block survives a regeneration; a changed schema makes the page stale.
        page = tmp_path / "toy_kind.md"
        page.write_text(page.read_text().replace("The fields of", "Hand-written prose. The fields of"))
        assert docs.stale(tmp_path) == []
        Section.model_fields["lr"].description = "another text"
        assert docs.stale(tmp_path) == [page]
        docs.write(tmp_path)
        assert "Hand-written prose." in page.read_text() and "another text" in page.read_text()
    finally:
        kinds.unregister("toy_kind")
        sys.modules.pop(module.__name__, None)


def test_check_exits_1_listing_stale_pages(tmp_path, capsys):
    assert docs.main(["--check", "--docs", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert all(f"{k}.md" in err for k in kinds.names())
    assert docs.main(["--docs", str(tmp_path)]) == 0
    assert docs.main(["--check", "--docs", str(tmp_path)]) == 0


def test_module_entry_point_checks_the_shipped_pages():
    proc = subprocess.run([sys.executable, "-m", "dist_core.docs", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
