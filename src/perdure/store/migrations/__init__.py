"""Versioned schema migrations, plain SQL, one folder per backend: NNNN_name.sql applied in order."""

from __future__ import annotations

from importlib import resources


def load(backend: str) -> list[tuple[int, str]]:
    folder = resources.files(__name__).joinpath(backend)
    found = [
        (int(entry.name.split("_", 1)[0]), entry.read_text())
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    ]
    return sorted(found)


def split_sql(script: str) -> list[str]:
    """Statements of a migration script (no semicolons inside statements, `--` comments on their own lines)."""
    statements, buf = [], []
    for line in script.splitlines():
        if line.strip().startswith("--"):
            continue
        buf.append(line)
        if line.rstrip().endswith(";"):
            stmt = "\n".join(buf).strip()
            if stmt.strip(";").strip():
                statements.append(stmt)
            buf = []
    tail = "\n".join(buf).strip()
    if tail:
        statements.append(tail)
    return statements
