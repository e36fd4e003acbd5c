"""``aidist submit --file``: inputs read from files, typed as the target takes them, and results
made printable as JSON lines.

A file is one job; a directory is one job per file in it (sorted by name, hidden files and
subdirectories left out). What a file becomes follows the target's input type: text (UTF-8),
bytes and image (the raw bytes), tensor (a ``.npy`` file, read without pickle), json (parsed).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np

from aidist.errors import InvalidInput

MAX_LISTED = 1024  # elements of an array printed in full; a bigger one as its dtype and shape


def input_files(path: Path) -> list[Path]:
    """The files ``--file PATH`` names: the file, or the files of a directory."""
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not found:
            raise InvalidInput(f"--file {path}: the directory holds no files")
        return found
    raise InvalidInput(f"--file {path}: no such file or directory")


def read_input(path: Path, input_type: str, target: str) -> Any:
    """One file as an input of ``input_type``; ``InvalidInput`` if it cannot be one."""
    if input_type in ("bytes", "image"):
        return path.read_bytes()
    if input_type == "tensor":
        if path.suffix != ".npy":
            raise InvalidInput(f"{target} takes a tensor: give .npy files (numpy.save), "
                               f"not {path.name}")
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise InvalidInput(f"{path} is not a numeric .npy array: {exc}") from exc
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{target} takes {input_type}, and {path} is not UTF-8 text") from exc
    if input_type == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{target} takes JSON, and {path} does not parse: {exc}") from exc
    return text


def jsonable(value: Any) -> Any:
    """A result as JSON: arrays of up to ``MAX_LISTED`` elements as lists, bigger ones as
    ``{"dtype", "shape"}``; bytes as ``{"bytes": size, "base64": ...}``."""
    if isinstance(value, np.ndarray):
        if value.size <= MAX_LISTED:
            return value.tolist()
        return {"dtype": value.dtype.name, "shape": list(value.shape)}
    if isinstance(value, bytes | bytearray):
        return {"bytes": len(value), "base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)
