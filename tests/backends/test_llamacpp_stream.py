"""One llama.cpp request's output side (``backends.llamacpp_stream``), without a model."""

from __future__ import annotations

from backends.base import EventItem, FinishEvent, GenerationRequest, SamplingParams, TokenEvent
from backends.llamacpp_stream import RequestStream


class ListSink:
    def __init__(self) -> None:
        self.started_calls = 0
        self.deliveries: list[list[EventItem]] = []

    def started(self) -> None:
        self.started_calls += 1

    def deliver(self, items: list[EventItem]) -> None:
        self.deliveries.append(items)


def stream(sink: ListSink, max_tokens: int = 8) -> RequestStream:
    return RequestStream(GenerationRequest("r", "prompt", SamplingParams(max_tokens=max_tokens)), 5, max_tokens, sink)


def test_events_wait_for_flush_and_go_in_one_delivery() -> None:
    sink = ListSink()
    request = stream(sink, max_tokens=2)
    request.start()
    assert request.on_token(10, b"Hel", eog=False) is False
    assert sink.deliveries == []  # held until the scheduler's next decode
    assert request.on_token(11, b"lo", eog=False) is True  # max_tokens reached
    request.flush()
    request.flush()  # nothing more held: no empty delivery
    [items] = sink.deliveries
    assert items[:2] == [TokenEvent(text="Hel", token_ids=(10,)), TokenEvent(text="lo", token_ids=(11,))]
    finish = items[2]
    assert isinstance(finish, FinishEvent)
    assert (finish.reason, finish.prompt_tokens, finish.completion_tokens) == ("length", 5, 2)
    assert sink.started_calls == 1


def test_a_request_cancelled_before_it_had_a_slot_read_no_prompt_tokens() -> None:
    sink = ListSink()
    waiting = stream(sink)
    waiting.finish("cancelled")
    waiting.flush()
    [[finish]] = sink.deliveries
    assert isinstance(finish, FinishEvent)
    assert (finish.reason, finish.prompt_tokens, finish.completion_tokens) == ("cancelled", 0, 0)
    assert sink.started_calls == 0
