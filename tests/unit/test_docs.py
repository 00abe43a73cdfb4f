"""Every ```python block of the README and docs/ runs, so the documentation cannot rot.

Each block runs as its own program in a fresh folder (its relative SQLite files land there). A block
whose first line is `# not run` is skipped (for fragments that need a server or a key).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks() -> list[pytest.param]:  # type: ignore[valid-type]
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for match in BLOCK.finditer(text):
            line = text[: match.start()].count("\n") + 1
            code = match.group(1)
            if code.startswith("# not run"):
                continue
            found.append(pytest.param(code, id=f"{doc.relative_to(ROOT)}:{line}"))
    return found


def test_the_docs_have_examples() -> None:
    assert len(blocks()) >= 3


@pytest.mark.parametrize("code", blocks())
def test_doc_example_runs(code: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
