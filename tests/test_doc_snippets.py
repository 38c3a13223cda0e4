"""Every ```python block of README.md and docs/**/*.md runs as pasted.

A page's blocks run in order in one fresh namespace, as a reader pasting them into one
Python session would, in a temporary working directory (what a snippet writes, such as
``figures/``, lands there, not in the repository): one test per page. Only ```python
blocks are run; ```bash, ```text and MyST directives (```{eval-rst}, ```{include}, ...)
are not Python. Each page starts from the same seeds (torch, numpy, random), so that a
page whose random inputs happened to break a snippet fails every time, not now and then.

A block is left out only when the line right before its fence is an HTML comment
``<!-- not-run: reason -->`` (invisible on the rendered page, visible in the source),
for what cannot run here: a GPU, a download, a user's own file. Prefer rewriting the
snippet so that it runs (random weights, a bundled image, a smaller input). The reasons
are listed by ``test_every_left_out_block_says_why``.

Cost: 33-37 s for all pages on the project's 2-core CPU with little else running (7 s
at most per page; several times that while other jobs share the cores). A page that
takes more than 10 s belongs in ``SLOW_PAGES`` (the ``slow`` marker).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

matplotlib.use("Agg")  # a snippet's plt.show() must not open a window

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

#: A fence opening a python block (nothing but "python" after the backticks), its body
#: and its closing fence.
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", flags=re.M | re.S)
#: The marker that leaves out the block whose fence follows on the next line.
NOT_RUN = re.compile(r"^<!--\s*not-run:(.*?)-->$")
#: A fence opening whose language is Python under another spelling (indented, ~~~, py,
#: pycon, {code-block} python, ...) would escape this test: such fences are refused.
PYTHON_FENCE = re.compile(
    r"^[ \t]*(`{3,}|~{3,})[ \t]*(\{[\w-]+\}[ \t]*)?(py|python3?|pycon|ipython3?)\b",
    flags=re.M | re.I,
)

#: The blocks left out, as (page, reason): a new marker must be added here too, so that
#: leaving a block out is a decision seen in review, not a way to make a page pass.
NOT_RUN_BLOCKS: set[tuple[str, str]] = set()

#: Pages that take more than 10 s (--durations=0 on the 2-core CPU, little else
#: running): none since their snippets were made cheap (the slowest, 5-7 s:
#: evaluation, beyond-classification, captum, quickstart).
SLOW_PAGES: set[str] = set()


@dataclass(frozen=True)
class Block:
    line: int  # the 1-based line of the opening fence
    code: str
    not_run: str | None  # the marker's reason; None for a block that runs


def pages() -> list[Path]:
    found = [ROOT / "README.md"]
    found += sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.relative_to(DOCS).parts)
    return found


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    lines = text.splitlines()
    found = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        marker = NOT_RUN.match(lines[line - 2].strip()) if line >= 2 else None
        reason = marker.group(1).strip() if marker else None
        found.append(Block(line, match.group(1), reason))
    return found


def page_id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


PAGES = [page for page in pages() if blocks(page)]


def test_the_python_blocks_are_found() -> None:
    ids = {page_id(page) for page in PAGES}
    assert {"README.md", "docs/quickstart.md", "docs/evaluation.md"} <= ids, ids
    assert len(PAGES) >= 15 and sum(len(blocks(page)) for page in PAGES) >= 40
    for page in pages():
        text = page.read_text(encoding="utf-8")
        other = [m.group(0) for m in PYTHON_FENCE.finditer(text) if m.group(0) != "```python"]
        assert not other, f"{page_id(page)}: write ```python (which this test runs): {other}"
        # A marker anywhere but right before a python fence would leave nothing out.
        fences = {block.line for block in blocks(page)}
        for number, line in enumerate(text.splitlines(), start=1):
            if NOT_RUN.match(line.strip()):
                assert number + 1 in fences, f"{page_id(page)}:{number}: no python fence next"


def test_every_left_out_block_says_why() -> None:
    left_out = [
        (page_id(page), block.line, block.not_run)
        for page in PAGES
        for block in blocks(page)
        if block.not_run is not None
    ]
    for where, line, reason in left_out:
        assert reason, f"{where}:{line}: <!-- not-run: --> needs a reason"
    assert {(where, reason) for where, _, reason in left_out} == NOT_RUN_BLOCKS, left_out


@pytest.mark.parametrize(
    "page",
    [
        pytest.param(
            page, id=page_id(page), marks=[pytest.mark.slow] if page_id(page) in SLOW_PAGES else []
        )
        for page in PAGES
    ],
)
def test_the_page_runs_as_pasted(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002  (Quantus draws from numpy's global generator)
    random.seed(0)
    namespace: dict[str, object] = {"__name__": "__main__"}
    ran = 0
    try:
        for block in blocks(page):
            if block.not_run is not None:
                continue
            # Blank lines first, so that a traceback's line numbers are the page's.
            code = compile("\n" * block.line + block.code, str(page), "exec")
            try:
                exec(code, namespace)
            except Exception as error:
                where = f"{page_id(page)}, the block at line {block.line}"
                raise AssertionError(f"{where} fails: {error!r}") from error
            ran += 1
    finally:
        plt.close("all")
    assert ran, f"{page_id(page)}: every block is left out"
