"""Values shared by the engine, the handlers and the provider layer (a leaf module).

Outcomes are values, not exceptions: a handler returns exactly one of ``Ok``, ``Retry`` or
``Reject`` and the engine dispatches on them exhaustively and persists them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Literal, Protocol, runtime_checkable


class RetryReason(StrEnum):
    """Why a message is retried: the fixed, small label set of ``cleanup_retry_total{reason}``.

    Never the raw error text — the original's unbounded label was a cardinality bomb.
    """

    RATE_LIMITED = "rate_limited"  # 429
    SERVER_ERROR = "server_error"  # 5xx, 408
    TIMEOUT = "timeout"  # request timed out
    CONNECTION = "connection"  # connect refused / reset
    AUTH = "auth"  # 401 / 403: a configuration problem, alerted on
    CONFLICT = "conflict"  # 409
    NOT_DELETED = "not_deleted"  # 2xx with deleted: false
    CONFIG = "config"  # unknown backend label, tenant without routing, missing key
    CIRCUIT_OPEN = "circuit_open"  # upstream known broken: failed fast without a call
    DATABASE = "database"  # PostgreSQL error while handling
    PENDING = "pending"  # chat cleanup waits for attachments still pending
    HANDLER_TIMEOUT = "handler_timeout"  # the handler outlived its budget
    HANDLER_ERROR = "handler_error"  # a bug: unexpected exception in a handler
    INTERRUPTED = "interrupted"  # the worker shut down mid-message: due again at once
    DEFERRED = "deferred"  # the tenant had its fair share of a busy route: its turn comes later


@dataclass(frozen=True)
class Message:
    """One delivery of an outbox message to a handler."""

    queue: str
    partition: int
    seq: int
    payload: bytes
    payload_type: str
    created_at: datetime
    delivery: int  # 1 on the first delivery; counts crashed and retried deliveries too


@dataclass(frozen=True)
class Ok:
    """Done (or nothing left to do): advance past the message."""


@dataclass(frozen=True)
class Retry:
    """Try again later; not sooner than ``retry_after_seconds`` from now, when given.

    A delay from now, like HTTP's Retry-After, and named so in every layer (``Transient``,
    ``RouteBusy``, ``RouteDeferred``); a parked retry's ``not_before`` column is the time it
    becomes.
    """

    reason: RetryReason
    detail: str = ""
    retry_after_seconds: float | None = None


@dataclass(frozen=True)
class Reject:
    """Never succeeds as it is: dead-letter the message with this reason."""

    reason: str


Outcome = Ok | Retry | Reject


class Handler(Protocol):
    """What the engine calls for each message of a queue."""

    async def __call__(self, message: Message) -> Outcome: ...


class Slot(Protocol):
    """A handling's hold on one of its process's handler slots (the engine's ``SlotHold``)."""

    @property
    def held(self) -> bool: ...

    async def acquire(self) -> None: ...

    def release(self) -> None: ...


_slot: ContextVar[Slot | None] = ContextVar("slot", default=None)


def hold_slot(slot: Slot) -> None:
    """The engine, as a handling starts: the slot ``provider_slot`` holds for it."""
    _slot.set(slot)


@asynccontextmanager
async def provider_slot() -> AsyncIterator[None]:
    """Held around a provider call: the handling's process slot.

    A handling of a ``CallSlotHandler`` takes its slot here and gives it back once the call
    is answered; any other handling already holds its slot from start to end, and this does
    nothing (nor outside the engine, where there is no slot).
    """
    slot = _slot.get()
    if slot is None or slot.held:
        yield
        return
    await slot.acquire()
    try:
        yield
    finally:
        slot.release()


@runtime_checkable
class CallSlotHandler(Handler, Protocol):
    """A handler whose handlings hold their process slot only around provider calls
    (``provider_slot``), not from start to end (SPEC §15).

    The slots ration provider calls. An attachment cleanup's take before its delete and its
    row write after it wait on the database (batched statements), and while they held the
    slot, a replica at provider latency 100 ms and 64 slots reached 0.81-0.84 of its ideal
    rate; with them outside, 0.90-0.92 (docs/PERFORMANCE.md).
    """

    slot_around_calls: Literal[True]


@dataclass(frozen=True)
class Prepared:
    """A message its handler's batch step settled: the set-based statement did all its work.
    ``log`` names the message's rows on its log line."""

    outcome: Ok
    log: Mapping[str, object] = field(default_factory=dict)


@runtime_checkable
class BatchHandler(Handler, Protocol):
    """A handler that can settle some of a batch's messages with one statement (SPEC §15).

    ``prepare`` gets the batch's trusted messages at once, before any runs, and answers each
    with a ``Prepared`` (settled: the engine records its outcome, no handler call) or None
    (the engine calls the handler for it as usual). What it did to a message it left must be
    what that message's handling would find and do again anyway. Suspect messages are never
    prepared (isolation.py): a payload that kills the process must do it while handled alone.
    """

    async def prepare(self, messages: Sequence[Message]) -> Sequence[Prepared | None]: ...
