"""Tar headers written byte for byte as Go's ``archive/tar`` writes them for kit.

Python's ``tarfile`` cannot be used: it appends ``/`` to directory names, pads the archive to a
10 KiB record, names PAX headers ``././@PaxHeader`` and formats numeric fields differently. A layer's
diffId is the sha256 of these bytes, so each field follows Go's ``templateV7Plus``/``formatOctal``:
zero-padded octal with a trailing NUL, checksum as six digits, NUL, space; USTAR when the entry fits
(splitting long names into prefix/name), else a PAX extended header ``<dir>/PaxHeaders.0/<base>``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from typing import BinaryIO

BLOCK = 512
_NAME, _PREFIX = 100, 155
TYPE_REG, TYPE_DIR, TYPE_PAX = b"0", b"5", b"x"

Sink = Callable[[bytes], object]


def _octal(width: int, value: int) -> bytes:
    """Go's formatOctal: leading zeros leaving room for a NUL; a value that does not fit becomes 0."""
    if value < 0 or (width < 22 and value >= 1 << ((width - 1) * 3)):
        value = 0
    digits = format(value, "o").rjust(width - 1, "0")
    return _string(width, digits.encode())


def _string(width: int, value: bytes) -> bytes:
    """Go's formatString: truncate to the field, NUL-terminate when there is room."""
    return value[:width].ljust(width, b"\0")


def _fits_octal(width: int, value: int) -> bool:
    return value >= 0 and (width >= 22 or value < 1 << ((width - 1) * 3))


def _ascii(text: str) -> str:
    return "".join(c for c in text if 0 < ord(c) < 0x80)


def _is_ascii(text: str) -> bool:
    return all(0 < ord(c) < 0x80 for c in text)


def _split_ustar(name: str) -> tuple[str, str] | None:
    """Go's splitUSTARPath: a long ASCII name split at a slash into prefix (≤155) and name (≤100)."""
    length = len(name)
    if length <= _NAME or not _is_ascii(name):
        return None
    if length > _PREFIX + 1:
        length = _PREFIX + 1
    elif name[length - 1] == "/":
        length -= 1
    i = name.rfind("/", 0, length)
    suffix_len, prefix_len = len(name) - i - 1, i
    if i <= 0 or suffix_len > _NAME or suffix_len == 0 or prefix_len > _PREFIX:
        return None
    return name[:i], name[i + 1 :]


def _block(fields: list[tuple[int, bytes]], magic: bytes) -> bytes:
    block = bytearray(BLOCK)
    for offset, value in fields:
        block[offset : offset + len(value)] = value
    block[257:265] = magic
    block[148:156] = b" " * 8
    checksum = sum(block)
    block[148:156] = _octal(7, checksum) + b" "
    return bytes(block)


def _header(name: str, mode: int, size: int, typeflag: bytes, uid: int, gid: int, *, prefix: str = "") -> bytes:
    """templateV7Plus + USTAR/PAX magic, for a main header."""
    fields = [
        (0, _string(_NAME, name.encode())),
        (100, _octal(8, mode)),
        (108, _octal(8, uid)),
        (116, _octal(8, gid)),
        (124, _octal(12, size)),
        (136, _octal(12, 0)),  # mtime: kit zeroes it; Go writes the Unix epoch
        (156, typeflag),
        (265, _string(32, b"")),
        (297, _string(32, b"")),
        (329, _octal(8, 0)),
        (337, _octal(8, 0)),
        (345, _string(_PREFIX, prefix.encode())),
    ]
    return _block(fields, b"ustar\x0000")


def _pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    size = len(body) + len(str(len(body)))
    record = str(size).encode() + body
    if len(record) != size:
        record = str(len(record)).encode() + body
    return record


def _pad(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


class GoTarWriter:
    """Writes entries to ``sink`` (a ``write`` callable) in Go's format; ``close`` adds two zero blocks."""

    def __init__(self, sink: Sink, *, uid: int = 1000, gid: int = 0) -> None:
        self._sink = sink
        self._uid = uid
        self._gid = gid

    def add_dir(self, name: str, mode: int) -> None:
        self._write_header(name, mode, 0, TYPE_DIR)

    def add_file(self, name: str, mode: int, size: int, source: BinaryIO, chunk: int = 1 << 20) -> None:
        """Stream ``size`` bytes from ``source``; a file that changes size while packed is an error."""
        self._write_header(name, mode, size, TYPE_REG)
        remaining = size
        while remaining:
            data = source.read(min(chunk, remaining))
            if not data:
                raise OSError(f"{name} shrank while it was being packed")
            self._sink(data)
            remaining -= len(data)
        if source.read(1):
            raise OSError(f"{name} grew while it was being packed")
        self._sink(_pad(size))

    def close(self) -> None:
        self._sink(b"\0" * (2 * BLOCK))

    def _write_header(self, name: str, mode: int, size: int, typeflag: bytes) -> None:
        pax: dict[str, str] = {}
        ustar_ok = True
        if (len(name) > _NAME or not _is_ascii(name)) and _split_ustar(name) is None:
            ustar_ok = False
            pax["path"] = name
        if not _fits_octal(12, size):
            ustar_ok = False
            pax["size"] = str(size)
        if ustar_ok:
            split = _split_ustar(name)
            prefix, short = split if split else ("", name)
            self._sink(_header(short, mode, size, typeflag, self._uid, self._gid, prefix=prefix))
            return
        data = b"".join(_pax_record(k, pax[k]) for k in sorted(pax))
        directory, base = posixpath.split(name)
        pax_name = _ascii(posixpath.join(directory, "PaxHeaders.0", base))[:_NAME].rstrip("/")
        fields = [
            (0, _string(_NAME, pax_name.encode())),
            (100, _octal(8, 0)),
            (108, _octal(8, 0)),
            (116, _octal(8, 0)),
            (124, _octal(12, len(data))),
            (136, _octal(12, 0)),
            (156, TYPE_PAX),
        ]
        self._sink(_block(fields, b"ustar\x0000"))
        self._sink(data + _pad(len(data)))
        self._sink(_header(_ascii(name), mode, size, typeflag, self._uid, self._gid))
