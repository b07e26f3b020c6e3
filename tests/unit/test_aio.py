"""livemig.aio: closing steps and helper processes, without losing a cancellation of the
caller or leaving a process behind."""

from __future__ import annotations

import asyncio
import logging

import pytest

from livemig.aio import communicate, reap, teardown

log = logging.getLogger(__name__)


def test_a_helper_past_its_limit_is_killed_and_reaped() -> None:
    async def main() -> tuple[int | None, tuple[bytes, bytes]]:
        slow = await asyncio.create_subprocess_exec("sleep", "30")
        with pytest.raises(TimeoutError):
            await communicate(slow, 0.2)
        quick = await asyncio.create_subprocess_exec(
            "echo", "hi", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        return slow.returncode, await communicate(quick, 5)

    killed, answer = asyncio.run(main())
    assert killed == -9  # reaped: no zombie, no sleeper left
    assert answer == (b"hi\n", b"")


@pytest.mark.parametrize("close", ["teardown", "reap"])
def test_a_cancelled_caller_stays_cancelled_while_it_closes(close: str) -> None:
    """Cancelling the task that waits in a closing step is the caller's cancellation, not
    the step's: it goes on (SIGTERM inside asyncio.run cancels the main task so)."""

    async def stubborn() -> None:  # a helper slow to go
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(30)

    async def main() -> str:
        helper = asyncio.create_task(stubborn())

        async def closer() -> str:
            if close == "reap":
                await reap(helper)
            else:
                await teardown(asyncio.sleep(30), log, "slow close")
            return "went on as if nothing happened"

        task = asyncio.create_task(closer())
        await asyncio.sleep(0.05)
        task.cancel()
        try:
            return await task
        except asyncio.CancelledError:
            return "cancelled"
        finally:
            helper.cancel()

    assert asyncio.run(main()) == "cancelled"


def test_a_closing_steps_own_cancellation_and_failure_are_absorbed() -> None:
    async def main() -> None:
        helper = asyncio.create_task(asyncio.sleep(30))
        await reap(helper)  # its cancellation: absorbed
        assert helper.cancelled()
        gone = asyncio.create_task(asyncio.sleep(30))
        gone.cancel()
        await teardown(gone, log, "cancelled already")

        async def fails() -> None:
            raise ConnectionResetError("the peer went first")

        await teardown(fails(), log, "peer gone")  # logged at debug, not raised

    asyncio.run(main())
