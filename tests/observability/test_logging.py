"""Logs are JSON lines in production and never carry a secret, tracebacks included."""

from __future__ import annotations

import contextvars
import io
import json
import logging
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from worker.observability import logging as logging_module
from worker.observability.logging import (
    bind_log_context,
    configure_logging,
    redact_event,
    redact_secrets,
    register_secret,
)

# Built from pieces so the test's own source lines (shown in tracebacks) never contain them.
DSN_PW = "s3cr3t-" + "DSN-pw"
API_KEY = "sk-test-" + "KEY-123"
SECRETS = (DSN_PW, API_KEY)


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = stream.getvalue().splitlines()
    return [json.loads(line) for line in lines]


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def configured(log_format: str = "json", level: str = "info") -> io.StringIO:
    stream = io.StringIO()
    configure_logging(log_format=log_format, level=level, stream=stream)  # type: ignore[arg-type]
    return stream


def test_json_mode_writes_one_object_per_line_with_timestamp_level_and_context() -> None:
    stream = configured()
    log = structlog.get_logger().bind(queue="mini-chat.chat_cleanup", partition=2)

    def in_a_task() -> None:
        bind_log_context(replica="r-1", partition=99)  # the line's own values win
        log.info("batch_leased", size=3)
        log.info("message_handled", seq=7, outcome="ok", duration_ms=12.5)

    contextvars.copy_context().run(in_a_task)
    log.info("worker_stopped")  # outside the task: none of its context
    first, second, outside = json_lines(stream)
    assert first["event"] == "batch_leased"
    assert first["level"] == "info"
    assert first["queue"] == "mini-chat.chat_cleanup"
    assert first["partition"] == 2
    assert first["replica"] == "r-1"
    assert first["timestamp"].endswith("Z")
    assert "T" in first["timestamp"]
    assert second["seq"] == 7
    assert second["outcome"] == "ok"
    assert "replica" not in outside


def test_auto_mode_is_json_when_not_a_tty_and_console_mode_is_not_json() -> None:
    auto = configured("auto")
    structlog.get_logger().info("worker_started", version="1")
    assert json_lines(auto)[0]["event"] == "worker_started"

    console = configured("console")
    structlog.get_logger().info("worker_stopping", api_key=API_KEY)
    text = console.getvalue()
    assert "worker_stopping" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])
    assert_clean(text)


def test_level_filters_events() -> None:
    stream = configured(level="warning")
    log = structlog.get_logger()
    log.info("message_handled")
    log.warning("lease_lost")
    assert [e["event"] for e in json_lines(stream)] == ["lease_lost"]


def test_unknown_level_is_rejected() -> None:
    with pytest.raises(ValueError, match="log level"):
        configure_logging(log_format="json", level="chatty", stream=io.StringIO())


def test_reconfiguring_does_not_duplicate_lines() -> None:
    configured()
    stream = configured()
    logging.getLogger("psycopg").warning("once")
    assert len(json_lines(stream)) == 1


@pytest.mark.parametrize(
    "text",
    [
        f"connect to postgresql://cleanup:{DSN_PW}@db:5432/chat failed",
        f"postgres://cleanup:{DSN_PW}@db/chat",
        f"host=db user=cleanup password={DSN_PW} dbname=chat",
        f"host=db password='{DSN_PW} x' dbname=chat",
        f"Authorization: Bearer {API_KEY}",
        f"headers={{'Authorization': 'Bearer {API_KEY}', 'api-key': '{DSN_PW}'}}",
        f"api-key: {DSN_PW}",
        f"request failed with key {API_KEY} at 12:00",
        f'{{"client_secret": "{DSN_PW}"}}',
    ],
)
def test_secret_shapes_are_redacted_in_text(text: str) -> None:
    redacted = redact_secrets(text)
    assert_clean(redacted)
    assert "***" in redacted


def test_ordinary_text_is_left_alone() -> None:
    text = "deleted 3 files; max_tokens: 5; token bucket refilled; chat 1f0e-aa done"
    assert redact_secrets(text) == text


def test_event_values_nested_dicts_and_key_names_are_redacted() -> None:
    stream = configured()
    structlog.get_logger().warning(
        "database_unavailable",
        error=f"connection to postgresql://u:{DSN_PW}@db/x refused",
        request={"headers": {"Authorization": f"Bearer {API_KEY}", "Accept": "json"}},
        attempts=[f"password={DSN_PW}", 3],
        api_key="plain-value-without-shape",
        db_password="another-plain-value",
        cause=RuntimeError(f"auth failed for {API_KEY}"),
    )
    text = stream.getvalue()
    assert_clean(text)
    assert "plain-value-without-shape" not in text
    assert "another-plain-value" not in text
    (event,) = json_lines(stream)
    assert event["request"]["headers"]["Accept"] == "json"
    assert event["request"]["headers"]["Authorization"] == "***"
    assert event["api_key"] == "***"
    assert event["attempts"] == ["password=***", 3]
    assert "auth failed for" in event["cause"]


def test_exception_tracebacks_are_kept_but_redacted() -> None:
    stream = configured()
    try:
        raise ConnectionError(f"postgresql://u:{DSN_PW}@db/x: key {API_KEY} rejected")
    except ConnectionError:
        structlog.get_logger().exception("handler_crashed", queue="q")
    (event,) = json_lines(stream)
    assert "Traceback (most recent call last)" in event["exception"]
    assert "ConnectionError" in event["exception"]
    assert_clean(stream.getvalue())


def test_registered_secrets_are_redacted_everywhere() -> None:
    key = "az-" + "plain-registered-0042"
    password = "pa" + "ss/w@rd-0042"
    register_secret(key)
    register_secret(password)
    register_secret("")  # ignored, not a pattern matching everything
    stream = configured()
    structlog.get_logger().info("worker_started", note=f"using {key}")
    logging.getLogger("openai").error("boom %s", key)
    quoted = "pa" + "ss%2Fw%40rd-0042"  # the password as it appears inside a DSN URL
    logging.getLogger("psycopg").warning("dsn host=db:5432 %s", quoted)
    text = stream.getvalue()
    for value in (key, password, quoted):
        assert value not in text
    assert len(json_lines(stream)) == 3


def test_a_secret_registered_after_a_value_was_logged_is_masked_from_then_on() -> None:
    """Log values' redactions are remembered; registering a secret forgets them."""
    key = "az-" + "late-registered-0043"
    stream = configured()
    log = structlog.get_logger()
    log.info("worker_started", note=f"using {key}")
    register_secret(key)
    log.info("worker_started", note=f"using {key}")
    before, after = json_lines(stream)
    assert key in before["note"]  # not yet a secret: nothing to mask it by
    assert after["note"] == "using ***"


def test_long_values_are_redacted_every_time_not_remembered() -> None:
    """Tracebacks and error texts are nearly always new: remembering them would only grow the
    cache by kilobytes a line."""
    stream = configured()
    before = logging_module._remembered_redaction.cache_info().currsize
    for n in range(20):
        structlog.get_logger().error(
            "handler_crashed", detail=f"{n} " + "x" * 10_000 + " " + API_KEY
        )
    lines = json_lines(stream)
    assert logging_module._remembered_redaction.cache_info().currsize - before <= 2  # the names
    assert len(lines) == 20
    assert_clean(stream.getvalue())


def test_stdlib_library_records_join_the_pipeline_at_warning_and_above() -> None:
    stream = configured(level="debug")
    logging.getLogger("psycopg.pool").info("noise")
    logging.getLogger("httpx2").debug("noise")
    logging.getLogger("psycopg").warning("connection to postgresql://u:%s@db failed", DSN_PW)
    try:
        raise TimeoutError(f"Authorization: Bearer {API_KEY}")
    except TimeoutError:
        logging.getLogger("openai").exception("request failed")
    warning, error = json_lines(stream)
    assert warning["logger"] == "psycopg"
    assert warning["level"] == "warning"
    assert "postgresql://u:***@db" in warning["event"]
    assert error["logger"] == "openai"
    assert error["level"] == "error"
    assert "TimeoutError" in error["exception"]
    assert_clean(stream.getvalue())


def test_capture_logs_sees_the_event_vocabulary() -> None:
    configured()
    with capture_logs(processors=[redact_event]) as logs:
        log = structlog.get_logger()
        log.info("retry_scheduled", reason="rate_limited", detail=f"Bearer {API_KEY}")
        log.info("dead_lettered", token=DSN_PW)
    assert [e["event"] for e in logs] == ["retry_scheduled", "dead_lettered"]
    assert logs[0]["detail"] == "Bearer ***"
    assert logs[1]["token"] == "***"
