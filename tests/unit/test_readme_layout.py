"""The README's architecture table names every module of `app/`, so it stays a complete map."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _table_rows() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Architecture") : text.index("## Changelog")]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = line.split("|")
        if len(cells) > 2 and cells[1].strip().startswith("`app/"):
            for name in re.findall(r"`(app/[^`]*)`", cells[1]):
                rows[name] = cells[2]
    return rows


def _covered(module: Path, rows: dict[str, str]) -> bool:
    relative = module.relative_to(ROOT).as_posix()
    if relative in rows:
        return True
    # A folder row lists its modules by name (`engine`, or a plain word such as `adapters`).
    for folder in [module.parent, *module.parent.parents]:
        key = folder.relative_to(ROOT).as_posix() + "/"
        if key in rows:
            return re.search(rf"\b{re.escape(module.stem)}\b", rows[key]) is not None
    return False


def test_every_app_module_is_in_the_architecture_table() -> None:
    rows = _table_rows()
    modules = [
        p
        for p in (ROOT / "app").rglob("*.py")
        if p.name != "__init__.py" and "versions" not in p.relative_to(ROOT / "app").parts
    ]
    missing = sorted(str(p.relative_to(ROOT)) for p in modules if not _covered(p, rows))
    assert not missing, f"README's architecture table does not name: {missing}"
