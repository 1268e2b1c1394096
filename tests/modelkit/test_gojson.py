import pytest

from devserver.modelkit._gojson import GoMap, go_marshal


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (12.3, b"12.3"),
        (1200.0, b"1200"),
        (-0.5, b"-0.5"),
        (1e-7, b"1e-7"),
        (1.5e-7, b"1.5e-7"),
        (1e21, b"1e+21"),
        (1e20, b"100000000000000000000"),
        (0.000001, b"0.000001"),
        (0.0, b"0"),
        (123, b"123"),
        (-123, b"-123"),
        (True, b"true"),
        (None, b"null"),
    ],
)
def test_numbers_like_go(value: object, expected: bytes) -> None:
    assert go_marshal(value) == expected


def test_strings_escape_like_go() -> None:
    expected = b'"\\u003ca \\u0026 b\\u003e\\u2028\\u2029\\n\\"' + "é".encode() + b'"'
    assert go_marshal('<a & b>\u2028\u2029\n"é') == expected


def test_maps_sort_structs_keep_order() -> None:
    assert go_marshal({"b": 1, "a": GoMap({"z": 1, "y": [GoMap({"d": 0, "c": 0})]})}) == (
        b'{"b":1,"a":{"y":[{"c":0,"d":0}],"z":1}}'
    )


def test_non_finite_floats_are_refused() -> None:
    with pytest.raises(ValueError):
        go_marshal(float("inf"))
