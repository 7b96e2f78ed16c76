"""The patched pyfuse3 session loop runs each handler's first step itself and, if the handler
suspends, goes on with it through `pyfuse3._pyfuse3.resume` (daemon/pyfuse3-patches/
session-loop-reader.patch). That must be exactly `await handler`: the same result, the same
exceptions, cancellation delivered, on the same task. Driven here without the kernel; every
mount test drives the loop itself."""
from __future__ import annotations

import pytest
import trio

from pyfuse3 import _pyfuse3

resume = _pyfuse3.resume


def first_step(coro):
    """What the session loop does with a handler's coroutine before it decides."""
    try:
        return False, coro.send(None)
    except StopIteration as done:
        return True, done.value


async def handler(log: list, fail: bool = False):
    log.append(trio.lowlevel.current_task())
    value = await trio.to_thread.run_sync(lambda: 42)
    log.append(trio.lowlevel.current_task())
    if fail:
        raise OSError(5, "after the thread")
    return value


async def test_a_suspended_handler_goes_on_as_await_would():
    log: list = []
    coro = handler(log)
    finished, suspended_on = first_step(coro)
    assert not finished
    assert await resume(coro, suspended_on) == 42
    assert log == [trio.lowlevel.current_task()] * 2       # on the task that ran the first step


async def test_an_exception_after_suspending_reaches_the_awaiter():
    coro = handler([], fail=True)
    _, suspended_on = first_step(coro)
    with pytest.raises(OSError, match="after the thread"):
        await resume(coro, suspended_on)


async def test_a_suspended_handler_is_cancelled_like_any_other():
    cleaned = []

    async def sleeper():
        try:
            await trio.sleep(10)
        finally:
            cleaned.append(True)

    with trio.move_on_after(0.01) as scope:
        coro = sleeper()
        _, suspended_on = first_step(coro)
        await resume(coro, suspended_on)
    assert scope.cancelled_caught and cleaned == [True]


async def test_a_handler_that_needs_no_wait_finishes_in_its_first_step():
    async def answer():
        return "from memory"

    assert first_step(answer()) == (True, "from memory")
