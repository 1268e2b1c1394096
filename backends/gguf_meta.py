"""Read a GGUF file's metadata header without the ``gguf`` package and without reading tensors.

Backend selection needs two or three keys (``general.type`` tells a LoRA adapter from a model,
``general.architecture`` lets us check an adapter fits its base). The header is a flat list of
typed key/value pairs; we walk it and stop once the wanted keys are found, so even a file with a
large vocabulary array costs milliseconds, and the runtime needs no extra dependency.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

GGUF_MAGIC = b"GGUF"

# GGUF value types (gguf.GGUFValueType) → struct format of the scalar types.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class GGUFHeaderError(ValueError):
    """The file is not a GGUF this reader understands (wrong magic, old version, truncated)."""


def is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


def read_metadata(path: Path, keys: Iterable[str]) -> dict[str, object]:
    """The values of ``keys`` found in ``path``'s header (missing keys are absent from the result)."""
    wanted = set(keys)
    found: dict[str, object] = {}
    with path.open("rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise GGUFHeaderError(f"{path.name} is not a GGUF file")
        version = _unpack(fh, "I")
        if version < 2:  # version 1 used 32-bit lengths; nothing current writes it
            raise GGUFHeaderError(f"{path.name} is GGUF version {version}, which is too old")
        _unpack(fh, "Q")  # tensor count
        for _ in range(_unpack(fh, "Q")):
            key = _read_string(fh)
            value_type = _unpack(fh, "I")
            if key in wanted:
                found[key] = _read_value(fh, value_type)
                if len(found) == len(wanted):
                    break
            else:
                _skip_value(fh, value_type)
    return found


def _unpack(fh: BinaryIO, fmt: str) -> int:
    size = struct.calcsize("<" + fmt)
    data = fh.read(size)
    if len(data) != size:
        raise GGUFHeaderError("the GGUF header is truncated")
    return struct.unpack("<" + fmt, data)[0]


def _read_string(fh: BinaryIO) -> str:
    length = _unpack(fh, "Q")
    data = fh.read(length)
    if len(data) != length:
        raise GGUFHeaderError("the GGUF header is truncated")
    return data.decode("utf-8", errors="replace")


def _read_value(fh: BinaryIO, value_type: int) -> object:
    if value_type == _STRING:
        return _read_string(fh)
    if value_type == _ARRAY:
        item_type, count = _unpack(fh, "I"), _unpack(fh, "Q")
        return [_read_value(fh, item_type) for _ in range(count)]
    if value_type in _SCALARS:
        return _unpack(fh, _SCALARS[value_type])
    raise GGUFHeaderError(f"unknown GGUF value type {value_type}")


def _skip_value(fh: BinaryIO, value_type: int) -> None:
    if value_type == _STRING:
        fh.seek(_unpack(fh, "Q"), 1)
    elif value_type == _ARRAY:
        item_type, count = _unpack(fh, "I"), _unpack(fh, "Q")
        if item_type in _SCALARS:
            fh.seek(count * struct.calcsize("<" + _SCALARS[item_type]), 1)
        else:
            for _ in range(count):
                _skip_value(fh, item_type)
    elif value_type in _SCALARS:
        fh.seek(struct.calcsize("<" + _SCALARS[value_type]), 1)
    else:
        raise GGUFHeaderError(f"unknown GGUF value type {value_type}")
