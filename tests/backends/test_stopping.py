"""Stop-string hold-back: nothing of a stop string is ever emitted, ordinary text is not delayed."""

from __future__ import annotations

import pytest

from backends.stopping import StopMatcher


def run(stops: list[str], pieces: list[str]) -> tuple[list[str], bool]:
    matcher = StopMatcher(stops)
    out = [matcher.feed(p) for p in pieces]
    out.append(matcher.flush())
    return out, matcher.stopped


def test_no_stops_passes_text_through_unchanged() -> None:
    out, stopped = run([], ["a", "b<", "c"])
    assert out == ["a", "b<", "c", ""]
    assert not stopped


def test_stop_inside_one_piece_cuts_there() -> None:
    out, stopped = run(["END"], ["hello END world"])
    assert "".join(out) == "hello "
    assert stopped


def test_stop_spanning_pieces_is_never_emitted() -> None:
    out, stopped = run(["<|end|>"], ["Hi", " <|", "en", "d|", "> tail"])
    assert "".join(out) == "Hi "
    assert stopped
    assert all("<" not in piece for piece in out)


def test_partial_match_is_released_when_it_cannot_become_a_stop() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("ab ST") == "ab "
    assert matcher.holding
    assert matcher.feed("AR") == "STAR"
    assert not matcher.holding


def test_held_tail_is_flushed_at_end_of_stream() -> None:
    out, stopped = run(["STOP"], ["xx", "ST"])
    assert out == ["xx", "", "ST"]
    assert not stopped


def test_earliest_of_several_stops_wins() -> None:
    out, _ = run(["world", "lo w"], ["hello world"])
    assert "".join(out) == "hel"


def test_overlapping_prefixes_hold_the_longest_candidate() -> None:
    # "aab" could still become "aabc"; "ab" alone is a prefix of "abd".
    matcher = StopMatcher(["aabc", "abd"])
    assert matcher.feed("xaab") == "x"
    assert matcher.feed("d") == "a"
    assert matcher.stopped


def test_after_stop_everything_is_dropped() -> None:
    matcher = StopMatcher(["."])
    assert matcher.feed("one. two") == "one"
    assert matcher.feed("three") == ""
    assert matcher.flush() == ""


@pytest.mark.parametrize("split", range(1, 11))
def test_every_split_point_gives_the_same_text(split: int) -> None:
    text = "abc<stop>def"
    out, stopped = run(["<stop>"], [text[:split], text[split:]])
    assert "".join(out) == "abc"
    assert stopped


def test_empty_stop_strings_are_ignored() -> None:
    out, stopped = run(["", "Z"], ["abc"])
    assert "".join(out) == "abc"
    assert not stopped
