"""The hand-off of events from backend threads to the event loop (``devserver.server.worker.Mailbox``)."""

from __future__ import annotations

import asyncio
import threading

from backends.base import FinishEvent, GenerationEvent, GenerationRequest, TokenEvent
from devserver.server.worker import Job, Mailbox


def test_posts_made_while_the_loop_is_busy_wake_it_once_and_arrive_in_order() -> None:
    async def scenario() -> tuple[int, list[list[GenerationEvent]]]:
        loop = asyncio.get_running_loop()
        wakes: list[object] = []
        call_soon_threadsafe = loop.call_soon_threadsafe

        def counting(callback: object, *args: object) -> object:
            wakes.append(callback)
            return call_soon_threadsafe(callback, *args)  # type: ignore[arg-type]

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        mailbox = Mailbox(loop)
        jobs = [Job(GenerationRequest(f"r{i}", "prompt"), mailbox) for i in range(3)]

        def engine() -> None:  # two steps of three streams, then every finish, as a scheduler posts them
            for step in range(2):
                for index, job in enumerate(jobs):
                    job.deliver([TokenEvent(text=f"{step}{index}")])
            for job in jobs:
                job.deliver([FinishEvent("stop", 1, 2)])

        thread = threading.Thread(target=engine)
        thread.start()
        thread.join()  # the loop runs nothing meanwhile, so every post lands in the same batch
        received = [[event async for event in job.events()] for job in jobs]
        return len(wakes), received

    wakes, received = asyncio.run(scenario())
    assert wakes == 1
    finish = FinishEvent("stop", 1, 2)
    assert received == [[TokenEvent(text=f"0{i}"), TokenEvent(text=f"1{i}"), finish] for i in range(3)]


def test_a_post_after_the_loop_closed_cancels_the_request() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    job = Job(GenerationRequest("r", "prompt"), Mailbox(loop))
    job.deliver([TokenEvent(text="late")])
    assert job.request.cancel.is_set()
