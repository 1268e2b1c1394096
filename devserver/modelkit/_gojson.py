"""Compact JSON byte for byte as Go's ``encoding/json`` writes it.

The ModelKit config blob is ``json.Marshal(KitFile)``; its sha256 is the config digest, so a kit-dev
pack only matches kit's when every byte matches: Go escapes ``<``, ``>``, ``&``, U+2028 and U+2029,
writes non-ASCII raw, sorts map keys, and formats floats its own way (``1200`` not ``1200.0``,
``1e-7`` not ``1e-07``). Struct field order is the caller's: dicts are written in insertion order,
so callers pass structs as ordered dicts and maps with ``sort_keys`` applied via ``GoMap``.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_ESCAPE_TABLE = str.maketrans(_GO_ESCAPES)


class GoMap(dict[str, Any]):
    """A JSON object that Go would write with sorted keys (a Go map, not a struct)."""


def _float(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"json: unsupported value: {value}")
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    if 1e-6 <= abs(value) < 1e21:
        text = format(Decimal(repr(value)), "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    text = repr(value)
    mantissa, _, exponent = text.partition("e")
    sign, digits = exponent[0], exponent[1:]
    return f"{mantissa}e{sign}{digits.lstrip('0').rjust(2, '0') if sign == '+' else digits.lstrip('0')}"


def _string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False).translate(_ESCAPE_TABLE)


def _write(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(_float(value))
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, dict):
        keys = sorted(value) if isinstance(value, GoMap) else list(value)
        out.append("{")
        for index, key in enumerate(keys):
            if index:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _write(value[key], out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def go_marshal(value: Any) -> bytes:
    """``json.Marshal(value)``: compact UTF-8 bytes."""
    out: list[str] = []
    _write(value, out)
    return "".join(out).encode("utf-8")


def as_go_map(value: Any) -> Any:
    """Mark every dict inside free-form data as a Go map (``map[string]any``), recursively."""
    if isinstance(value, dict):
        return GoMap({k: as_go_map(v) for k, v in value.items()})
    if isinstance(value, list):
        return [as_go_map(v) for v in value]
    return value
