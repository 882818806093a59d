"""Every ```python block of docs/python-sdk.md runs, as written, against the live server: each in
its own `python -c` process with `NIMBUS_URL`, `LAMBDA_API_KEY` and `NIMBUS_API_KEY` exported,
as a reader would run it after `nimbus dev`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Tuple

import pytest

from conftest import ROOT, run_python

DOC = ROOT / "docs" / "python-sdk.md"


def python_blocks(path: Path) -> List[Tuple[int, str]]:
    """(line number, code) of each fenced ```python block."""
    out = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        if re.fullmatch(r"```python\s*", lines[i]):
            start = i + 1
            j = start
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            assert j < len(lines), f"{path.name}:{start}: unterminated code block"
            out.append((start, "\n".join(lines[start:j]) + "\n"))
            i = j
        i += 1
    return out


BLOCKS = python_blocks(DOC)


def test_the_page_has_examples():
    assert len(BLOCKS) >= 6, f"expected the examples of {DOC.name}, found {len(BLOCKS)}"


@pytest.mark.parametrize("line,code", BLOCKS, ids=[f"line{n}" for n, _ in BLOCKS])
def test_doc_example_runs(line, code, child_env):
    p = run_python(code, child_env, is_code=True)
    assert p.returncode == 0, f"docs/python-sdk.md example at line {line} failed:\n{p.stdout}\n{p.stderr}"
