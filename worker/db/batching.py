"""One statement for the rows of many concurrently handled messages (SPEC §15, set-based work).

The engine hands a leased batch's messages to handlers that run at once, and each asks the
database about its own row. A ``Batcher`` collects the calls made in one turn of the event loop
and runs them as one ``= ANY(...)`` statement, handing each caller its own answer: the database
(and the pool) see one round trip per turn instead of one per message, and no caller waits
longer than the rest of the turn it called in.

A batch never names one row twice: a second call for a key already in the forming batch goes
to the next one, so each caller's answer is its statement's answer for its row alone (two
messages for one attachment are two statements, as before). A failed statement fails every
call in it, as each call's own statement would have.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

A = TypeVar("A")  # what one call asks about
R = TypeVar("R")  # its answer

MAX_BATCH = 500  # rows per statement: bounds one statement's size and its row locks


class Batcher(Generic[A, R]):
    """``await batcher(item)``: the answer for ``item`` from ``run(items)``, which takes the
    items of one batch and returns their answers in the same order."""

    def __init__(
        self,
        run: Callable[[Sequence[A]], Awaitable[Sequence[R]]],
        *,
        key: Callable[[A], Hashable],
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._run = run
        self._key = key
        self._max_batch = max_batch
        self._waiting: list[tuple[A, asyncio.Future[R]]] = []
        self._flush_scheduled = False
        self._running: set[asyncio.Task[None]] = set()  # held so they are not collected

    async def __call__(self, item: A) -> R:
        answer: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, answer))
        self._schedule_flush()
        return await answer

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Start one statement for this turn's calls; repeats of a key wait for the next."""
        self._flush_scheduled = False
        batch: list[tuple[A, asyncio.Future[R]]] = []
        later: list[tuple[A, asyncio.Future[R]]] = []
        keys: set[Hashable] = set()
        for item, answer in self._waiting:
            if answer.done():  # its caller was cancelled
                continue
            key = self._key(item)
            if key in keys or len(batch) >= self._max_batch:
                later.append((item, answer))
            else:
                keys.add(key)
                batch.append((item, answer))
        self._waiting = later
        if later:
            self._schedule_flush()
        if batch:
            task = asyncio.get_running_loop().create_task(self._answer(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _answer(self, batch: list[tuple[A, asyncio.Future[R]]]) -> None:
        try:
            answers = await self._run([item for item, _ in batch])
            if len(answers) != len(batch):
                raise AssertionError(f"{len(answers)} answers to {len(batch)} calls")
        except asyncio.CancelledError:  # the loop is shutting down: so are its callers
            for _, answer in batch:
                answer.cancel()
            raise
        except Exception as exc:  # every caller sees its statement's failure
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(exc)
            return
        for (_, answer), result in zip(batch, answers, strict=True):
            if not answer.done():
                answer.set_result(result)
