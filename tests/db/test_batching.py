"""The Batcher: the calls of one event-loop turn become one statement, each caller gets its own
answer, a key never appears twice in one statement, and a failure reaches every caller in it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from worker.db.batching import Batcher


class Recorder:
    """A stand-in statement: records each batch it ran and answers ``f"{item}!"``."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.batches: list[list[str]] = []
        self.fail = fail

    async def __call__(self, items: Sequence[str]) -> list[str]:
        self.batches.append(list(items))
        await asyncio.sleep(0)  # a round trip
        if self.fail is not None:
            raise self.fail
        return [f"{item}!" for item in items]


def _batcher(run: Recorder, max_batch: int = 500) -> Batcher[str, str]:
    return Batcher(run, key=lambda item: item.split("#")[0], max_batch=max_batch)


async def test_calls_of_one_turn_are_one_statement_with_their_own_answers() -> None:
    run = Recorder()
    batcher = _batcher(run)
    answers = await asyncio.gather(*(batcher(f"row{i}") for i in range(64)))
    assert run.batches == [[f"row{i}" for i in range(64)]]
    assert answers == [f"row{i}!" for i in range(64)]


async def test_a_key_is_named_once_per_statement_and_repeats_keep_their_order() -> None:
    run = Recorder()
    batcher = _batcher(run)
    answers = await asyncio.gather(batcher("a#1"), batcher("b"), batcher("a#2"), batcher("a#3"))
    assert run.batches == [["a#1", "b"], ["a#2"], ["a#3"]]
    assert answers == ["a#1!", "b!", "a#2!", "a#3!"]


async def test_a_statement_holds_at_most_max_batch_rows() -> None:
    run = Recorder()
    batcher = _batcher(run, max_batch=3)
    await asyncio.gather(*(batcher(f"r{i}") for i in range(7)))
    assert [len(b) for b in run.batches] == [3, 3, 1]


async def test_calls_made_while_a_statement_runs_form_the_next_one() -> None:
    run = Recorder()
    batcher = _batcher(run)
    first = asyncio.gather(batcher("a"), batcher("b"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the first statement is in flight
    second = asyncio.gather(batcher("c"), batcher("d"))
    assert await first == ["a!", "b!"]
    assert await second == ["c!", "d!"]
    assert run.batches == [["a", "b"], ["c", "d"]]


async def test_a_failed_statement_fails_every_call_in_it_and_the_next_one_runs() -> None:
    run = Recorder(fail=RuntimeError("database went away"))
    batcher = _batcher(run)
    results = await asyncio.gather(batcher("a"), batcher("b"), return_exceptions=True)
    assert [str(r) for r in results] == ["database went away"] * 2
    run.fail = None
    assert await batcher("c") == "c!"


async def test_a_cancelled_call_leaves_the_statement_and_the_others_answered() -> None:
    run = Recorder()
    batcher = _batcher(run)
    gone = asyncio.ensure_future(batcher("gone"))
    kept = asyncio.ensure_future(batcher("kept"))
    await asyncio.sleep(0)  # both are waiting; the flush comes next turn
    gone.cancel()
    assert await kept == "kept!"
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert run.batches == [["kept"]]


async def test_an_answer_count_that_does_not_match_is_an_error_for_every_caller() -> None:
    async def short(items: Sequence[str]) -> list[str]:
        return ["only one"]

    batcher: Batcher[str, str] = Batcher(short, key=lambda item: item)
    results = await asyncio.gather(batcher("a"), batcher("b"), return_exceptions=True)
    assert all(isinstance(r, AssertionError) for r in results), results
