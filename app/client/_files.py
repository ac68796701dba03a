"""Local files of the client: a PEFT folder to upload, a downloaded zip to unpack, rows to
serialise as a JSONL dataset."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from app.client.errors import ResponseFormatError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
META_FILE = "switchyard.json"
# What a PEFT folder may hold that the service stores; anything else (README.md, training
# state) stays behind.
ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE, META_FILE)
_TYPES = {".json": "application/json", ".safetensors": "application/octet-stream"}


def adapter_parts(folder: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    """The multipart files of an upload: config and weights (required), switchyard.json
    when the folder has one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"adapter folder {folder} does not exist")
    parts = []
    for name in ADAPTER_FILES:
        path = folder / name
        if not path.is_file():
            if name == META_FILE:
                continue
            raise FileNotFoundError(f"{folder} has no {name} (a PEFT adapter folder needs it)")
        parts.append((name, (name, path.read_bytes(), _TYPES[path.suffix])))
    return parts


def extract_adapter(data: bytes, folder: Path) -> list[Path]:
    """Unpack a downloaded adapter zip into `folder` (created); returns the files written.

    Only plain file names are accepted: an entry with a directory part or `..` is refused
    rather than written outside the folder.
    """
    folder = Path(folder)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise ResponseFormatError(f"download is not a zip file: {exc}") from exc
    written = []
    with archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            name = PurePosixPath(info.filename)
            if len(name.parts) != 1 or name.name in ("", ".", ".."):
                raise ResponseFormatError(f"zip entry {info.filename!r} is not a plain file name")
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / name.name
            target.write_bytes(archive.read(info))
            written.append(target)
    return written


def rows_jsonl(rows: Iterable[Mapping[str, Any]]) -> bytes:
    """Rows as a JSONL file (one object a line), as the datasets endpoint takes it."""
    # ASCII escapes: a raw U+2028 or U+0085 in a text would be a line break to a reader that
    # splits lines the way str.splitlines() does.
    lines = [json.dumps(dict(row), allow_nan=False) for row in rows]
    if not lines:
        raise ValueError("rows is empty: a dataset needs at least one row")
    return ("\n".join(lines) + "\n").encode("utf-8")


def dataset_part(path: Path) -> tuple[str, tuple[str, bytes, str]]:
    """The multipart `file` of a dataset upload from a local JSONL or CSV file."""
    path = Path(path)
    kind = "text/csv" if path.suffix.lower() == ".csv" else "application/jsonl"
    return ("file", (path.name, path.read_bytes(), kind))
