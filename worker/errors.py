"""The one error tree of the worker.

Third-party exceptions are translated at exactly one boundary each (psycopg in ``worker.db``,
openai/httpx2 in ``worker.providers``); nothing above those layers catches them raw.

    CleanupWorkerError                 anything this package raises on purpose
    ├── ConfigError                    bad or missing configuration: refuse to start (exit 2)
    ├── UsageError                     bad CLI input that click did not catch (exit 2)
    ├── DatabaseUnavailable            PostgreSQL is not usable right now: unreachable, read-only,
    │                                  shutting down, serialization failure... (exit 3; the daemon
    │                                  backs off and retries). Which errors: worker.db.pool
    ├── SchemaError                    migrations missing or a queue registered differently
    │   └── PartitionCountMismatch     a queue exists with another partition count
    ├── OutboxError                    enqueue refused: the caller's transaction should roll back
    │   ├── InvalidQueueName
    │   ├── QueueNotRegistered
    │   ├── PartitionOutOfRange
    │   ├── PayloadTooLarge
    │   └── InvalidPayloadType
    ├── ProducerError                  chat-service flows (soft-delete + enqueue) refused
    │   ├── NotFound
    │   ├── Forbidden
    │   └── AttachmentLocked
    └── LeaseLost                      this process no longer owns a lease; its work is redelivered

Messages are one line, say what is wrong and how to fix it, and never contain a secret.
"""

from __future__ import annotations


class CleanupWorkerError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(CleanupWorkerError):
    """Configuration is invalid; the message names the key path."""


class UsageError(CleanupWorkerError):
    """The operator asked for something that cannot be done as asked."""


class DatabaseUnavailable(CleanupWorkerError):
    """PostgreSQL is not usable right now; the message names the cause (and its SQLSTATE).

    Raised only by ``worker.db.pool.translate_errors``, which holds the one list of what counts
    (by SQLSTATE class): retrying later is the fix, so nothing crashes for it.
    """


class SchemaError(CleanupWorkerError):
    """The database schema is missing or does not match what the worker needs."""


class PartitionCountMismatch(SchemaError):
    """A queue is already registered with a different partition count."""


class OutboxError(CleanupWorkerError):
    """An enqueue was refused; nothing was written."""


class InvalidQueueName(OutboxError):
    pass


class QueueNotRegistered(OutboxError):
    pass


class PartitionOutOfRange(OutboxError):
    pass


class PayloadTooLarge(OutboxError):
    pass


class InvalidPayloadType(OutboxError):
    pass


class ProducerError(CleanupWorkerError):
    """A chat-service delete flow was refused; its transaction rolled back."""


class NotFound(ProducerError):
    pass


class Forbidden(ProducerError):
    pass


class AttachmentLocked(ProducerError):
    """The attachment is referenced by a message and cannot be deleted."""


class LeaseLost(CleanupWorkerError):
    """The lease expired or was taken over before the ack; the batch will be redelivered."""
