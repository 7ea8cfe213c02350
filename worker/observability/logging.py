"""structlog setup for the daemon and the CLI, with secrets redacted from everything written.

One pipeline renders both structlog events and stdlib records (psycopg, psycopg_pool, httpx2,
aiohttp, openai: WARNING and above only) to one stream: one JSON object per line in production (or
whenever the stream is not a TTY), a readable console line otherwise. Every value, nested
dicts and formatted tracebacks included, goes through ``redact_secrets`` before rendering
(all but the timestamp the pipeline stamps itself), because the things most likely to end up
in a log line — exception text from psycopg and the SDK — are the ones that quote DSNs,
headers and keys.

Event vocabulary (stable: dashboards and tests match on it; context is bound once per task
with ``bind_log_context``):

``worker_started``       the daemon is up (replica id, HTTP port)
``message_handled``      the one canonical line per message outcome: queue, partition, seq,
                         delivery, tenant_id, chat_id / attachment_id, outcome (ok|retry|reject),
                         reason, duration_ms; chat messages also system_request_id (the chat
                         service's id of the deletion, to follow it across both services' logs)
``attachment_cleaned``   a provider file deleted (or already gone) and its row done
``attachment_cleanup_retrying`` a delete failed transiently; the row stays pending: reason
``attachment_cleanup_failed``   the row reached terminal ``failed``: permanent (refused) or not
``attachment_cleanup_skipped``  the delete failed but the row was already terminal or gone
``vector_store_cleaned`` a chat's vector store deleted and its row removed
``retry_scheduled``      queue, partition, seq, delivery, reason, delay_seconds (after the ack)
``dead_lettered``        queue, partition, seq, delivery, reason (after the ack)
``lease_lost``           a heartbeat or an ack found the lease taken: delivered again
``handler_crashed``      a bug in a handler (traceback); the message is retried
``database_unavailable`` a loop backs off: loop, cause (the reason, with its SQLSTATE); logged
                         once per distinct cause in an outage
``database_schema_missing`` migrations not applied; the daemon waits, not ready
``database_recovered``   every loop that failed has completed a statement again: down_seconds
``loop_crashed``         a bug stopped a loop: the process exits 1 so it is restarted
``worker_stopping``      a signal arrived; no new leases
``worker_interrupting``  the grace period ran out; unfinished messages are parked, due at once
``worker_stopped``       in-flight work finished or released
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import re
import sys
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import IO, Literal

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from worker.config import redact_passwords

REDACTED = "***"
# Libraries whose stdlib records join the pipeline; their INFO/DEBUG chatter stays out.
LIBRARY_LOGGERS = ("psycopg", "psycopg_pool", "httpx2", "httpcore2", "aiohttp", "openai")
_SENSITIVE_KEY = re.compile(r"key|password|passwd|secret|token|authorization", re.IGNORECASE)
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # "Authorization: Bearer X", "'authorization': 'Basic X'", "api-key=X", "password = 'X'",
    # "access_token: X" — the header / keyword / repr forms psycopg, httpx2 and openai produce.
    (
        re.compile(
            # Starts only at a word start (lookbehind): from inside a long token the unanchored
            # prefix re-scanned the rest of it at every position (quadratic).
            r"""((?<![\w-])[\w-]*?(?:authorization|api[-_]?key|password|passwd|pwd|secret|token)["']?"""
            r"""\s*[:=]\s*(?:(?:bearer|basic|token)\s+)?)"""
            r"""(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s"',;&)}\]]+)""",
            re.IGNORECASE,
        ),
        r"\1***",
    ),
    (re.compile(r"(\bbearer\s+)[\w\-.~+/]+=*", re.IGNORECASE), r"\1***"),
    (re.compile(r"\bsk-[\w\-]{8,}"), REDACTED),  # OpenAI-style keys: sk-..., sk-proj-...
)
# Every text a credential pattern (here and in config.redact_passwords, for DSNs) can match
# contains one of these; keep them in step (tests/observability/test_redact_prefilter.py
# checks). A regex with the patterns' flag, not lower() + `in`: IGNORECASE also matches U+0131
# (dotless i), U+017F (long s) and U+212A (Kelvin sign) to i, s, k, which lower() does not.
_MAY_HOLD_CREDENTIAL = re.compile(
    r"authorization|api[-_]?key|passw|pwd|secret|token|bearer|sk-|://", re.IGNORECASE
)
# The same literals for ASCII text, where IGNORECASE is exactly lower() (the property test
# checks that both agree).
_CREDENTIAL_LITERALS = (
    "authorization", "apikey", "api-key", "api_key", "passw", "pwd", "secret", "token",
    "bearer", "sk-", "://",
)  # fmt: skip
_MIN_SECRET_LENGTH = 4  # shorter values cannot be masked without mangling every line
_MAX_DEPTH = 8
_HANDLER_NAME = "cleanup-worker"


_NO_CONTEXT: Mapping[str, object] = MappingProxyType({})
_log_context: contextvars.ContextVar[Mapping[str, object]] = contextvars.ContextVar(
    "cleanup_worker_log_context", default=_NO_CONTEXT
)


def bind_log_context(**values: object) -> None:
    """Put ``values`` on every line this task (and the tasks it starts) logs from now on.

    One context variable holding the whole mapping, where structlog's ``bind_contextvars``
    keeps a variable per key and its ``merge_contextvars`` walks the whole context on every
    line: 6 us per message for its seven keys, 1 us this way.
    """
    _log_context.set({**_log_context.get(), **values})


@contextlib.contextmanager
def log_context(**values: object) -> Iterator[None]:
    """``values`` on the lines logged inside the ``with`` only (a task's own lines outside
    it keep what the task bound): for lines about one message logged by a whole batch."""
    token = _log_context.set({**_log_context.get(), **values})
    try:
        yield
    finally:
        _log_context.reset(token)


def merge_log_context(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the bound context under the line's own values (those win)."""
    for key, value in _log_context.get().items():
        event_dict.setdefault(key, value)
    return event_dict


class _SecretRegistry:
    """Runtime secret values (API keys, the DSN password) masked wherever they appear."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: str) -> None:
        # The percent-encoded form is what appears inside a DSN URL.
        forms = {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)}
        with self._lock:
            self._values |= {f for f in forms if len(f) >= _MIN_SECRET_LENGTH}
            if self._values:
                ordered = sorted(self._values, key=len, reverse=True)  # longest wins
                self._pattern = re.compile("|".join(map(re.escape, ordered)))

    def mask(self, text: str) -> str:
        pattern = self._pattern
        return text if pattern is None else pattern.sub(REDACTED, text)


_secrets = _SecretRegistry()


def register_secret(value: str) -> None:
    """Mask every later occurrence of ``value`` in logs (API keys, DSN password, read at start)."""
    _secrets.add(value)
    _remembered_redaction.cache_clear()  # its answers were for the secrets known before


def redact_secrets(text: str) -> str:
    """``text`` with registered secrets and anything shaped like a credential replaced.

    The credential patterns run only if ``_MAY_HOLD_CREDENTIAL`` finds one of their literals:
    this is the hot path of every log line, and most values (ids, queue names, outcomes) have
    none. Registered secrets are arbitrary strings, so they are masked before that check.
    """
    text = _secrets.mask(text)  # arbitrary strings: never behind the pre-filter
    if not _may_hold_credential(text):
        return text
    text = redact_passwords(text)  # DSN forms are the config module's to know
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


_REMEMBERED_MAX_CHARS = 256  # ids, names, outcomes; not tracebacks or error texts


def _redact_logged_text(text: str) -> str:
    """``redact_secrets`` for a log value, remembered when it is short.

    Most values of a line come again in the next ones (event names, queues, outcomes, a
    message's tenant, chat and attachment ids), and redacting them was over half of a line's
    cost. Long texts (tracebacks, error bodies) are nearly always new and would make the
    cache hold megabytes, so they are redacted every time.
    """
    if len(text) > _REMEMBERED_MAX_CHARS:
        return redact_secrets(text)
    return _remembered_redaction(text)


@functools.lru_cache(maxsize=4096)
def _remembered_redaction(text: str) -> str:
    """Cleared whenever a secret is registered (``register_secret``)."""
    return redact_secrets(text)


def _may_hold_credential(text: str) -> bool:
    """Whether ``text`` holds one of the credential patterns' literals (``_MAY_HOLD_CREDENTIAL``).

    ASCII text (ids, queue names, outcomes: nearly every value) is lowered and searched with
    ``in``: a quarter of a JSON line's cost less than the case-insensitive regex. Other text
    goes through the regex, which also folds lookalikes (U+0131, U+017F, U+212A).
    """
    if text.isascii():
        lowered = text.lower()
        return any(literal in lowered for literal in _CREDENTIAL_LITERALS)
    return _MAY_HOLD_CREDENTIAL.search(text) is not None


@functools.lru_cache(maxsize=1024)
def _is_sensitive_key(key: str) -> bool:
    """Cached: the same dozen keys come with every line (a regex search each was a quarter of
    a line's cost)."""
    return _SENSITIVE_KEY.search(key) is not None


_PLAIN_TYPES = (int, float, bool, type(None))  # exact types: nothing to redact in them


def _redact_value(value: object, depth: int = 0) -> object:
    if isinstance(value, str):
        return _redact_logged_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth >= _MAX_DEPTH:
        return REDACTED
    if isinstance(value, Mapping):
        return {
            str(k): REDACTED if _is_sensitive_key(str(k)) else _redact_value(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v, depth + 1) for v in value]
    # Anything else (exceptions, UUIDs, objects with a __repr__) is rendered here, so the
    # renderer never turns an unredacted repr into output.
    return _redact_logged_text(str(value))


def redact_event(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: redact every value; drop values of secret-looking keys entirely."""
    for key, value in event_dict.items():
        if key in ("_record", "_from_structlog"):  # ProcessorFormatter's own bookkeeping
            continue
        if _is_sensitive_key(key):
            event_dict[key] = REDACTED
        elif type(value) is str:  # nearly every value: straight to the remembered redaction
            event_dict[key] = _redact_logged_text(value)
        elif type(value) not in _PLAIN_TYPES:
            event_dict[key] = _redact_value(value)
    return event_dict


class _LineSink:
    """One stream and one lock for both pipelines, so lines from threads never interleave."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def write_line(self, line: str) -> None:
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


class _SinkLogger:
    """The structlog "wrapped logger": receives the rendered line, whatever the level."""

    def __init__(self, sink: _LineSink) -> None:
        self._sink = sink

    def msg(self, message: str) -> None:
        self._sink.write_line(message)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class _SinkHandler(logging.Handler):
    """stdlib handler writing the ProcessorFormatter's line into the shared sink."""

    def __init__(self, sink: _LineSink) -> None:
        super().__init__()
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._sink.write_line(self.format(record))
        except Exception:
            self.handleError(record)


def _parse_level(level: str) -> int:
    number = logging.getLevelNamesMapping().get(level.strip().upper())
    if number is None:
        raise ValueError(f"unknown log level {level!r}; use debug, info, warning or error")
    return number


def configure_logging(
    *,
    log_format: Literal["json", "console", "auto"],
    level: str,
    stream: IO[str] | None = None,
) -> None:
    """Route structlog and stdlib logging through one redacting pipeline into ``stream``.

    ``stream`` defaults to stderr, keeping stdout for command output (``status --json``).
    Safe to call again (tests, CLI re-configuration): the previous handler is replaced.
    """
    out = stream if stream is not None else sys.stderr
    number = _parse_level(level)
    use_json = log_format == "json" or (log_format == "auto" and not _isatty(out))
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=_isatty(out))
    )
    shared: list[Processor] = [
        merge_log_context,
        structlog.processors.add_log_level,
        structlog.processors.StackInfoRenderer(),
        # Tracebacks become text here so redact_event sees (and cleans) them.
        structlog.processors.format_exc_info,
        redact_event,
        # After redaction: the pipeline's own clock holds no secret, and a value new on every
        # line would only push the remembered ones out of _redact_logged_text.
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    sink = _LineSink(out)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=lambda *_args: _SinkLogger(sink),
        # Not cached: tests swap the configuration (capture_logs) after loggers exist.
        cache_logger_on_first_use=False,
    )
    handler = _SinkHandler(sink)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(number, logging.WARNING))
    logging.getLogger("worker").setLevel(number)  # our own stdlib loggers, if any, at our level
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(max(number, logging.WARNING))
    # The pool warns on every failed reconnect (dozens a second in an outage); the daemon logs
    # database_unavailable / database_recovered once per outage instead.
    logging.getLogger("psycopg.pool").setLevel(max(number, logging.ERROR))


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or file-like without isatty
        return False
