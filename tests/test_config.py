"""Configuration loading: sources, precedence, strict validation, one-line secret-free errors."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from worker.config import (
    BackendConfig,
    Config,
    ProvidersConfig,
    TenantOverride,
    load_config,
    redact_passwords,
)
from worker.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.yaml"
SECRET = "s3cr3t-XYZ"
TENANT = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"
P = "CLEANUP_WORKER__"
OPENAI = {
    f"{P}PROVIDERS__BACKENDS__OPENAI__KIND": "openai",
    f"{P}PROVIDERS__BACKENDS__OPENAI__API_KEY_ENV": "OPENAI_API_KEY",
}
AZURE = {
    f"{P}PROVIDERS__BACKENDS__AZURE__KIND": "azure",
    f"{P}PROVIDERS__BACKENDS__AZURE__ENDPOINT": "https://r.openai.azure.com",
    f"{P}PROVIDERS__BACKENDS__AZURE__API_VERSION": "2025-03-01-preview",
    f"{P}PROVIDERS__BACKENDS__AZURE__API_KEY_FILE": "/run/secrets/azure",
}


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def fail(
    path: Path | None = None, env: dict[str, str] | None = None, dsn: str | None = None
) -> str:
    """Load, expect a ConfigError, check it is one line, return its message."""
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=env or {}, dsn=dsn)
    message = str(info.value)
    assert message.startswith("config error: ")
    assert "\n" not in message
    assert "\r" not in message
    return message


def uncommented_example() -> str:
    """The example with its '(uncomment to use)' blocks uncommented, as an operator would."""
    out, active = [], False
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        if active and not line.strip():
            active = False
        out.append(re.sub(r"^(\s*)# ", r"\1", line) if active else line)
        active = active or "(uncomment to use" in line
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------- defaults / example


def test_no_file_no_env_gives_defaults() -> None:
    assert load_config(None, environ={}) == Config()


def test_unrelated_env_is_ignored() -> None:
    assert load_config(None, environ={"HOME": "/root", "CLEANUP_WORKER_OTHER": "x"}) == Config()


def test_example_file_equals_defaults_plus_its_backend() -> None:
    expected = dataclasses.replace(
        Config(),
        providers=ProvidersConfig(
            backends={
                "openai": BackendConfig(
                    kind="openai",
                    base_url="https://api.openai.com/v1",
                    api_key_env="OPENAI_API_KEY",
                )
            }
        ),
    )
    assert load_config(EXAMPLE, environ={}) == expected


def test_example_commented_blocks_are_valid(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, uncommented_example()), environ={})
    azure = cfg.providers.backends["azure"]
    assert (azure.kind, azure.api_version) == ("azure", "2025-03-01-preview")
    assert azure.api_key_file is not None
    assert azure.api_key_env is None
    assert len(cfg.providers.tenants) == 2
    overrides = [o for t in cfg.providers.tenants.values() for o in t.values()]
    assert any(o.endpoint for o in overrides)
    assert any(o.base_url for o in overrides)


def test_example_documents_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    cfg = Config()
    stack: list[Any] = [cfg]
    names: set[str] = set()
    while stack:
        obj = stack.pop()
        for f in dataclasses.fields(obj):
            names.add(f.name)
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                stack.append(value)
    for cls in (BackendConfig, TenantOverride):
        names |= {f.name for f in dataclasses.fields(cls)}
    missing = {n for n in names if not re.search(rf"\b{n}\b", text)}
    assert not missing


# ------------------------------------------------------------------------------------ file sources


def test_config_path_from_env(tmp_path: Path) -> None:
    path = write(tmp_path, "outbox: {batch_size: 7}\n")
    assert load_config(None, environ={"CLEANUP_WORKER_CONFIG": str(path)}).outbox.batch_size == 7


def test_path_argument_wins_over_config_env(tmp_path: Path) -> None:
    a, b = write(tmp_path, "outbox: {batch_size: 7}\n", "a.yaml"), write(tmp_path, "{}\n", "b.yaml")
    assert load_config(b, environ={"CLEANUP_WORKER_CONFIG": str(a)}).outbox.batch_size == 100


def test_empty_file_and_empty_sections_give_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), environ={}) == Config()
    text = "database:\noutbox:\n  retry:\nproviders:\n  backends:\n  tenants:\n"
    assert load_config(write(tmp_path, text), environ={}) == Config()


def test_partial_nested_section_keeps_other_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "outbox:\n  chat_queue: {partitions: 16}\n"), environ={})
    assert cfg.outbox.chat_queue.name == "mini-chat.chat_cleanup"
    assert cfg.outbox.chat_queue.partitions == 16


def test_missing_file_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert str(missing) in fail(missing)
    message = fail(env={"CLEANUP_WORKER_CONFIG": str(missing)})
    assert str(missing) in message
    assert "CLEANUP_WORKER_CONFIG" in message


def test_directory_is_not_a_config_file(tmp_path: Path) -> None:
    assert str(tmp_path) in fail(tmp_path)


def test_bad_yaml_reports_line(tmp_path: Path) -> None:
    path = write(tmp_path, "outbox:\n  batch_size: 5\n  retry: [1, 2\ncleanup: {}\n")
    message = fail(path)
    assert str(path) in message
    assert "line 4" in message


def test_duplicate_key_rejected_with_line(tmp_path: Path) -> None:
    message = fail(write(tmp_path, "outbox:\n  batch_size: 5\n  batch_size: 6\n"))
    assert "duplicate key 'batch_size'" in message
    assert "line 3" in message


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    assert "(top level): expected a mapping, got a list" in fail(write(tmp_path, "- a\n- b\n"))


def test_section_must_be_mapping(tmp_path: Path) -> None:
    message = fail(write(tmp_path, "outbox: 5\n"))
    assert message.startswith("config error: outbox: expected a mapping")


def test_yaml_is_safe_loaded(tmp_path: Path) -> None:
    message = fail(write(tmp_path, "outbox: !!python/object/apply:os.system ['true']\n"))
    assert "line 1" in message


# ----------------------------------------------------------------------------------- env overrides


def test_env_overrides_every_level(tmp_path: Path) -> None:
    env = {
        f"{P}DATABASE__DSN": "postgresql://db.internal/cw",
        f"{P}DATABASE__POOL_MAX_SIZE": "20",
        f"{P}OUTBOX__BATCH_SIZE": "250",
        f"{P}OUTBOX__LEASE_SECONDS": "45.5",
        f"{P}OUTBOX__ATTACHMENT_QUEUE__PARTITIONS": "8",
        f"{P}OUTBOX__RETRY__MAX_DELIVERIES": "10",
        f"{P}CLEANUP__MAX_ATTEMPTS": "6",
        f"{P}OBSERVABILITY__LOG_LEVEL": "DEBUG",
        f"{P}OBSERVABILITY__LOG_FORMAT": "Json",
        **OPENAI,
        f"{P}PROVIDERS__BACKENDS__OPENAI__BASE_URL": "https://proxy.internal/v1",
        f"{P}PROVIDERS__TENANTS__{TENANT.replace('-', '').upper()}__OPENAI__MAX_RPS": "5",
    }
    cfg = load_config(None, environ=env)
    assert cfg.database.dsn == "postgresql://db.internal/cw"
    assert cfg.database.pool_max_size == 20
    assert (cfg.outbox.batch_size, cfg.outbox.lease_seconds) == (250, 45.5)
    assert cfg.outbox.attachment_queue.partitions == 8
    assert cfg.outbox.retry.max_deliveries == 10
    assert cfg.cleanup.max_attempts == 6
    assert (cfg.observability.log_level, cfg.observability.log_format) == ("debug", "json")
    assert cfg.providers.backends["openai"].base_url == "https://proxy.internal/v1"
    assert cfg.providers.tenants == {TENANT: {"openai": TenantOverride(max_rps=5.0)}}


def test_env_key_names_are_case_insensitive() -> None:
    assert (
        load_config(None, environ={"cleanup_worker__Outbox__Batch_Size": "3"}).outbox.batch_size
        == 3
    )


def test_env_overrides_yaml_backend_and_tenant(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
providers:
  backends:
    OpenAI: {{kind: openai, api_key_file: /run/k}}
  tenants:
    "{TENANT.upper()}":
      OpenAI: {{base_url: "https://a.example/v1"}}
""",
    )
    env = {
        f"{P}PROVIDERS__BACKENDS__OPENAI__API_KEY_FILE": "",  # empty unsets an optional key
        f"{P}PROVIDERS__BACKENDS__OPENAI__API_KEY_ENV": "K",
        f"{P}PROVIDERS__TENANTS__{TENANT}__OPENAI__BASE_URL": "https://b.example/v1",
    }
    cfg = load_config(path, environ=env)
    backend = cfg.providers.backends["OpenAI"]  # the YAML spelling of the label is kept
    assert (backend.api_key_env, backend.api_key_file) == ("K", None)
    assert cfg.providers.tenants[TENANT]["OpenAI"].base_url == "https://b.example/v1"


def test_env_creates_azure_backend_and_tenant_override() -> None:
    env = {
        **AZURE,
        f"{P}PROVIDERS__TENANTS__{TENANT}__AZURE__ENDPOINT": "https://t.openai.azure.com",
    }
    cfg = load_config(None, environ=env)
    assert cfg.providers.backends["azure"].endpoint == "https://r.openai.azure.com"
    assert cfg.providers.tenants[TENANT]["azure"].endpoint == "https://t.openai.azure.com"


def test_env_string_key_keeps_text() -> None:
    env = {f"{P}OUTBOX__CHAT_QUEUE__NAME": "123", f"{P}DATABASE__DSN": "host=db port=5432"}
    cfg = load_config(None, environ=env)
    assert cfg.outbox.chat_queue.name == "123"
    assert cfg.database.dsn == "host=db port=5432"


def test_env_mapping_value_is_yaml() -> None:
    cfg = load_config(None, environ={f"{P}OUTBOX__RETRY": "{base_seconds: 5, max_seconds: 10}"})
    assert (cfg.outbox.retry.base_seconds, cfg.outbox.retry.max_seconds) == (5.0, 10.0)
    assert cfg.outbox.retry.max_deliveries == 8


def test_env_value_that_is_not_yaml() -> None:
    message = fail(env={f"{P}OUTBOX__BATCH_SIZE": "[1"})
    assert message.startswith("config error: outbox.batch_size: the value is not valid YAML")


def test_a_backend_without_a_shared_key_is_accepted() -> None:
    """SPEC §13: it serves only tenants with their own override (the routing tests show how)."""
    env = {
        f"{P}PROVIDERS__BACKENDS__OPENAI__KIND": "openai",
        f"{P}PROVIDERS__TENANTS__{TENANT}__OPENAI__API_KEY_ENV": "TENANT_KEY",
    }
    cfg = load_config(None, environ=env)
    backend = cfg.providers.backends["openai"]
    assert (backend.api_key_env, backend.api_key_file) == (None, None)
    assert cfg.providers.tenants[TENANT]["openai"].api_key_env == "TENANT_KEY"


def test_malformed_env_name() -> None:
    assert f"{P}OUTBOX____BATCH_SIZE" in fail(env={f"{P}OUTBOX____BATCH_SIZE": "1"})


@pytest.mark.parametrize(
    ("file_dsn", "override", "env_dsn", "cli_dsn", "expected"),
    [
        ("host=file", None, None, None, "host=file"),
        ("host=file", "host=override", None, None, "host=override"),
        ("host=file", "host=override", "host=envdsn", None, "host=envdsn"),
        ("host=file", "host=override", "host=envdsn", "host=cli", "host=cli"),
        ("host=file", None, "", None, "host=file"),  # an empty CLEANUP_WORKER_DSN is unset
    ],
)
def test_dsn_precedence(
    tmp_path: Path,
    file_dsn: str,
    override: str | None,
    env_dsn: str | None,
    cli_dsn: str | None,
    expected: str,
) -> None:
    path = write(tmp_path, f"database: {{dsn: '{file_dsn}'}}\n")
    env = {} if override is None else {f"{P}DATABASE__DSN": override}
    if env_dsn is not None:
        env["CLEANUP_WORKER_DSN"] = env_dsn
    assert load_config(path, environ=env, dsn=cli_dsn).database.dsn == expected


def test_env_override_beats_file(tmp_path: Path) -> None:
    path = write(tmp_path, "outbox: {batch_size: 7, concurrency: 3}\n")
    cfg = load_config(path, environ={f"{P}OUTBOX__BATCH_SIZE": "9"})
    assert (cfg.outbox.batch_size, cfg.outbox.concurrency) == (9, 3)


# ---------------------------------------------------------------------------------- normalisation


def test_normalisation(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
observability: {{log_level: WARNING, log_format: Console}}
providers:
  backends:
    openai: {{kind: OpenAI, api_key_env: K}}
  tenants:
    "{{{TENANT.upper()}}}": {{openai: {{}}}}
""",
    )
    cfg = load_config(path, environ={})
    assert (cfg.observability.log_level, cfg.observability.log_format) == ("warning", "console")
    assert cfg.providers.backends["openai"].kind == "openai"
    assert cfg.providers.backends["openai"].base_url == "https://api.openai.com/v1"
    assert cfg.providers.tenants == {TENANT: {"openai": TenantOverride()}}
    assert isinstance(
        load_config(None, environ={f"{P}OUTBOX__LEASE_SECONDS": "40"}).outbox.lease_seconds, float
    )


# ------------------------------------------------------------------------------------- validation

LEASE = f"{P}OUTBOX__LEASE_SECONDS"
BAD_ENV: list[tuple[dict[str, str], str]] = [
    ({f"{P}DATABASE__DSN": "mysql://h/db"}, "database.dsn"),
    ({f"{P}DATABASE__POOL_MIN_SIZE": "-1"}, "database.pool_min_size"),
    ({f"{P}DATABASE__POOL_MAX_SIZE": "0"}, "database.pool_max_size"),
    ({f"{P}DATABASE__POOL_MIN_SIZE": "20"}, "database.pool_min_size"),
    ({f"{P}OUTBOX__ATTACHMENT_QUEUE__NAME": "-bad"}, "outbox.attachment_queue.name"),
    ({f"{P}OUTBOX__ATTACHMENT_QUEUE__NAME": "bad."}, "outbox.attachment_queue.name"),
    ({f"{P}OUTBOX__ATTACHMENT_QUEUE__NAME": "a b"}, "outbox.attachment_queue.name"),
    ({f"{P}OUTBOX__ATTACHMENT_QUEUE__NAME": "a" * 1025}, "outbox.attachment_queue.name"),
    ({f"{P}OUTBOX__CHAT_QUEUE__NAME": "mini-chat.attachment_cleanup"}, "outbox.chat_queue.name"),
    ({f"{P}OUTBOX__CHAT_QUEUE__PARTITIONS": "3"}, "outbox.chat_queue.partitions"),
    ({f"{P}OUTBOX__CHAT_QUEUE__PARTITIONS": "0"}, "outbox.chat_queue.partitions"),
    ({f"{P}OUTBOX__CHAT_QUEUE__PARTITIONS": "128"}, "outbox.chat_queue.partitions"),
    ({f"{P}OUTBOX__BATCH_SIZE": "0"}, "outbox.batch_size"),
    ({f"{P}OUTBOX__BATCH_SIZE": "10001"}, "outbox.batch_size"),
    ({f"{P}OUTBOX__BATCH_SIZE": "1.5"}, "outbox.batch_size"),
    ({f"{P}OUTBOX__BATCH_SIZE": "true"}, "outbox.batch_size"),
    ({LEASE: "4.9"}, "outbox.lease_seconds"),
    ({LEASE: ".inf"}, "outbox.lease_seconds"),
    ({LEASE: ".nan"}, "outbox.lease_seconds"),
    ({f"{P}OUTBOX__CONCURRENCY": "0"}, "outbox.concurrency"),
    ({f"{P}OUTBOX__CONCURRENCY": "1025"}, "outbox.concurrency"),
    ({f"{P}OUTBOX__POLL_INTERVAL_SECONDS": "0"}, "outbox.poll_interval_seconds"),
    ({f"{P}OUTBOX__VACUUM_INTERVAL_SECONDS": "-1"}, "outbox.vacuum_interval_seconds"),
    ({f"{P}OUTBOX__SHUTDOWN_GRACE_SECONDS": "0"}, "outbox.shutdown_grace_seconds"),
    ({f"{P}OUTBOX__RETRY__BASE_SECONDS": "0"}, "outbox.retry.base_seconds"),
    ({f"{P}OUTBOX__RETRY__BASE_SECONDS": "1000"}, "outbox.retry.base_seconds"),
    ({f"{P}OUTBOX__RETRY__MAX_DELIVERIES": "0"}, "outbox.retry.max_deliveries"),
    ({f"{P}CLEANUP__MAX_ATTEMPTS": "0"}, "cleanup.max_attempts"),
    ({f"{P}CLEANUP__FILE_CONCURRENCY": "0"}, "cleanup.file_concurrency"),
    ({f"{P}OBSERVABILITY__HTTP_PORT": "65536"}, "observability.http_port"),
    ({f"{P}OBSERVABILITY__HTTP_HOST": ""}, "observability.http_host"),
    ({f"{P}OBSERVABILITY__METRICS_PREFIX": "mini-chat"}, "observability.metrics_prefix"),
    ({f"{P}OBSERVABILITY__METRICS_PREFIX": "9chat"}, "observability.metrics_prefix"),
    ({f"{P}OBSERVABILITY__LOG_FORMAT": "xml"}, "observability.log_format"),
    ({f"{P}OBSERVABILITY__LOG_LEVEL": "verbose"}, "observability.log_level"),
    ({f"{P}OBSERVABILITY__BACKLOG_REFRESH_SECONDS": "0"}, "observability.backlog_refresh_seconds"),
    # backends
    ({f"{P}PROVIDERS__BACKENDS__OPENAI__API_KEY_ENV": "K"}, "providers.backends.openai.kind"),
    (
        {**OPENAI, f"{P}PROVIDERS__BACKENDS__OPENAI__KIND": "anthropic"},
        "providers.backends.openai.kind",
    ),
    (
        {**OPENAI, f"{P}PROVIDERS__BACKENDS__OPENAI__BASE_URL": "ftp://x"},
        "providers.backends.openai.base_url",
    ),
    (
        {**OPENAI, f"{P}PROVIDERS__BACKENDS__OPENAI__ENDPOINT": "https://x"},
        "providers.backends.openai.endpoint",
    ),
    (
        {**OPENAI, f"{P}PROVIDERS__BACKENDS__OPENAI__API_VERSION": "v1"},
        "providers.backends.openai.api_version",
    ),
    (
        {**AZURE, f"{P}PROVIDERS__BACKENDS__AZURE__ENDPOINT": ""},
        "providers.backends.azure.endpoint",
    ),
    (
        {**AZURE, f"{P}PROVIDERS__BACKENDS__AZURE__API_VERSION": ""},
        "providers.backends.azure.api_version",
    ),
    (
        {**AZURE, f"{P}PROVIDERS__BACKENDS__AZURE__BASE_URL": "https://x"},
        "providers.backends.azure.base_url",
    ),
    (
        {**AZURE, f"{P}PROVIDERS__BACKENDS__AZURE__API_KEY_ENV": "K"},
        "providers.backends.azure.api_key_file",
    ),
    (
        {**AZURE, f"{P}PROVIDERS__BACKENDS__AZURE__API_VERSION": "v1"},
        "providers.backends.azure.api_version",
    ),
    (
        {**AZURE, f"{P}PROVIDERS__BACKENDS__AZURE__API_VERSION": "latest"},
        "providers.backends.azure.api_version",
    ),
    (
        {**AZURE, f"{P}PROVIDERS__BACKENDS__AZURE__API_VERSION": "2024-02-15-preview"},
        "providers.backends.azure.api_version",
    ),
    (
        {**AZURE, f"{P}PROVIDERS__BACKENDS__AZURE__API_VERSION": "2024-13-45-garbage"},
        "providers.backends.azure.api_version",
    ),
    (
        {
            **AZURE,
            f"{P}PROVIDERS__BACKENDS__AZURE__ENDPOINT": "",
            f"{P}PROVIDERS__BACKENDS__AZURE__API_VERSION": "",
            f"{P}PROVIDERS__BACKENDS__AZURE__BASE_URL": "https://r.openai.azure.com/openai",
        },
        "providers.backends.azure.base_url",
    ),
    (
        {**AZURE, f"{P}PROVIDERS__BACKENDS__AZURE__ORGANIZATION": "org with spaces"},
        "providers.backends.azure.organization",
    ),
    (
        {**OPENAI, f"{P}PROVIDERS__ROUTE_SUSPICION__NOT_FOUND_THRESHOLD": "0"},
        "providers.route_suspicion.not_found_threshold",
    ),
    (
        {**OPENAI, f"{P}PROVIDERS__BACKENDS__OPENAI__API_KEY_ENV": "1BAD"},
        "providers.backends.openai.api_key_env",
    ),
    (
        {**AZURE, f"{P}PROVIDERS__BACKENDS__AZURE__API_KEY_FILE": " "},
        "providers.backends.azure.api_key_file",
    ),
    (
        {**OPENAI, f"{P}PROVIDERS__BACKENDS__OPENAI__TIMEOUT_SECONDS": "15"},
        "providers.backends.openai.timeout_seconds",
    ),
    (
        {**OPENAI, f"{P}PROVIDERS__BACKENDS__OPENAI__TIMEOUT_SECONDS": "0"},
        "providers.backends.openai.timeout_seconds",
    ),
    ({**OPENAI, LEASE: "10"}, "providers.backends.openai.timeout_seconds"),
    (
        {**OPENAI, f"{P}PROVIDERS__BACKENDS__OPENAI__MAX_CONCURRENCY": "0"},
        "providers.backends.openai.max_concurrency",
    ),
    (
        {**OPENAI, f"{P}PROVIDERS__BACKENDS__OPENAI__MAX_RPS": "0"},
        "providers.backends.openai.max_rps",
    ),
    ({f"{P}PROVIDERS__BACKENDS__-X__KIND": "openai"}, "providers.backends.-X"),
    # tenant overrides
    (
        {**OPENAI, f"{P}PROVIDERS__TENANTS__NOT-A-UUID__OPENAI__MAX_RPS": "1"},
        "providers.tenants.NOT-A-UUID",
    ),
    (
        {**OPENAI, f"{P}PROVIDERS__TENANTS__{TENANT}__AZURE__MAX_RPS": "1"},
        f"providers.tenants.{TENANT}.azure",
    ),
    (
        {**OPENAI, f"{P}PROVIDERS__TENANTS__{TENANT}__OPENAI__ENDPOINT": "https://x"},
        f"providers.tenants.{TENANT}.openai.endpoint",
    ),
    (
        {**OPENAI, f"{P}PROVIDERS__TENANTS__{TENANT}__OPENAI__API_VERSION": "x"},
        f"providers.tenants.{TENANT}.openai.api_version",
    ),
    (
        {**AZURE, f"{P}PROVIDERS__TENANTS__{TENANT}__AZURE__BASE_URL": "https://x"},
        f"providers.tenants.{TENANT}.azure.base_url",
    ),
    (
        {**AZURE, f"{P}PROVIDERS__TENANTS__{TENANT}__AZURE__ENDPOINT": "not a url"},
        f"providers.tenants.{TENANT}.azure.endpoint",
    ),
    (
        {
            **OPENAI,
            f"{P}PROVIDERS__TENANTS__{TENANT}__OPENAI__API_KEY_ENV": "A",
            f"{P}PROVIDERS__TENANTS__{TENANT}__OPENAI__API_KEY_FILE": "/b",
        },
        f"providers.tenants.{TENANT}.openai.api_key_file",
    ),
    (
        {**OPENAI, f"{P}PROVIDERS__TENANTS__{TENANT}__OPENAI__MAX_RPS": "0"},
        f"providers.tenants.{TENANT}.openai.max_rps",
    ),
    (
        {**OPENAI, f"{P}PROVIDERS__TENANTS__{TENANT}__OPENAI__MAX_CONCURRENCY": "-1"},
        f"providers.tenants.{TENANT}.openai.max_concurrency",
    ),
]


@pytest.mark.parametrize(("env", "key"), BAD_ENV, ids=[k for _, k in BAD_ENV])
def test_invalid_value_names_key_path_and_source(env: dict[str, str], key: str) -> None:
    message = fail(env=env)
    assert message.startswith(f"config error: {key}: ")
    assert re.search(r"\(from CLEANUP_WORKER__[\w-]+(, CLEANUP_WORKER__[\w-]+)*\)$", message), (
        message
    )


def test_invalid_value_message_shape() -> None:
    message = fail(env={f"{P}OUTBOX__BATCH_SIZE": "abc"})
    assert message == (
        "config error: outbox.batch_size: expected an integer in 1..10000, got 'abc' "
        "(from CLEANUP_WORKER__OUTBOX__BATCH_SIZE)"
    )


def test_max_deliveries_must_exceed_max_attempts(tmp_path: Path) -> None:
    path = write(tmp_path, "outbox: {retry: {max_deliveries: 5}}\ncleanup: {max_attempts: 5}\n")
    message = fail(path)
    assert message.startswith(
        "config error: outbox.retry.max_deliveries: must be greater than cleanup.max_attempts (5)"
    )
    assert "dead-lettered before its attachments reach a terminal state" in message
    assert message.endswith(f"(from {path})")
    # the source of the other key is named when that is the one that changed
    message = fail(env={f"{P}CLEANUP__MAX_ATTEMPTS": "8"})
    assert message.startswith("config error: outbox.retry.max_deliveries:")
    assert message.endswith(f"(from {P}CLEANUP__MAX_ATTEMPTS)")


def test_timeout_must_stay_below_half_the_lease() -> None:
    message = fail(env={**OPENAI, LEASE: "20"})
    assert message.startswith(
        "config error: providers.backends.openai.timeout_seconds: must be below half"
    )
    assert LEASE in message
    cfg = load_config(None, environ={**OPENAI, LEASE: "20.5"})
    assert cfg.providers.backends["openai"].timeout_seconds == 10.0


def test_boundaries_accepted() -> None:
    env = {
        f"{P}OUTBOX__BATCH_SIZE": "10000",
        f"{P}OUTBOX__CONCURRENCY": "1024",
        f"{P}OUTBOX__ATTACHMENT_QUEUE__PARTITIONS": "64",
        f"{P}OUTBOX__CHAT_QUEUE__PARTITIONS": "1",
        f"{P}OUTBOX__CHAT_QUEUE__NAME": "a" * 1024,
        LEASE: "25",
        f"{P}OUTBOX__RETRY__BASE_SECONDS": "900",
        f"{P}OUTBOX__RETRY__MAX_DELIVERIES": "1",
        f"{P}CLEANUP__MAX_ATTEMPTS": "1",
        f"{P}OBSERVABILITY__HTTP_PORT": "0",
        f"{P}OUTBOX__SHUTDOWN_GRACE_SECONDS": "100",  # may exceed the lease
    }
    with pytest.raises(ConfigError, match="max_deliveries"):
        load_config(None, environ=env)  # 1 is not > 1
    env[f"{P}OUTBOX__RETRY__MAX_DELIVERIES"] = "2"
    cfg = load_config(None, environ=env)
    assert cfg.outbox.shutdown_grace_seconds == 100.0
    assert cfg.observability.http_port == 0


def test_yaml_type_errors_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "outbox:\n  concurrency: [1]\n")
    assert fail(path) == (
        "config error: outbox.concurrency: expected an integer in 1..1024, got a list "
        f"(from {path})"
    )


def test_missing_required_backend_kind(tmp_path: Path) -> None:
    path = write(tmp_path, "providers:\n  backends:\n    openai:\n")
    assert fail(path).startswith(
        "config error: providers.backends.openai.kind: required key is missing"
    )


def test_non_uuid_tenant_key(tmp_path: Path) -> None:
    path = write(tmp_path, "providers:\n  tenants:\n    acme: {}\n")
    assert fail(path).startswith("config error: providers.tenants.acme: tenant keys must be UUIDs")


# ----------------------------------------------------------------------------------- unknown keys


def test_unknown_key_suggests_closest(tmp_path: Path) -> None:
    message = fail(write(tmp_path, "outbox:\n  batch_sise: 5\n"))
    assert message.startswith(
        "config error: outbox.batch_sise: unknown key; did you mean 'outbox.batch_size'?"
    )
    message = fail(env={f"{P}OUTBOX__RETRY__MAX_DELIVERY": "3"})
    assert (
        "outbox.retry.max_delivery: unknown key; did you mean 'outbox.retry.max_deliveries'?"
        in message
    )
    assert message.endswith(f"(from {P}OUTBOX__RETRY__MAX_DELIVERY)")


def test_unknown_key_in_backend_and_top_level() -> None:
    message = fail(env={**OPENAI, f"{P}PROVIDERS__BACKENDS__OPENAI__TIMEOUT": "3"})
    assert (
        "providers.backends.openai.timeout: unknown key; "
        "did you mean 'providers.backends.openai.timeout_seconds'?" in message
    )
    message = fail(env={f"{P}ZZZ": "1"})
    assert message.startswith("config error: zzz: unknown key; valid keys: database, outbox")


# ---------------------------------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    "where",
    ["backend", "tenant", "env"],
)
def test_literal_api_key_rejected(tmp_path: Path, where: str) -> None:
    if where == "env":
        message = fail(env={**OPENAI, f"{P}PROVIDERS__BACKENDS__OPENAI__API_KEY": SECRET})
        key = "providers.backends.openai.api_key"
    else:
        body = f"api_key: {SECRET}"
        text = (
            f"providers:\n  backends:\n    openai: {{kind: openai, {body}}}\n"
            if where == "backend"
            else f"providers:\n  backends:\n    openai: {{kind: openai, api_key_env: K}}\n"
            f"  tenants:\n    '{TENANT}': {{openai: {{{body}}}}}\n"
        )
        message = fail(write(tmp_path, text))
        key = (
            "providers.backends.openai.api_key"
            if where == "backend"
            else f"providers.tenants.{TENANT}.openai.api_key"
        )
    assert message.startswith(f"config error: {key}: literal API keys are not accepted")
    assert "api_key_env" in message
    assert "api_key_file" in message
    assert SECRET not in message


SECRET_DSN = f"postgresql://app:{SECRET}@db.internal:5432/chat"
BAD_SECRET_DSN = f"mysql://app:{SECRET}@db.internal/chat"


@pytest.mark.parametrize(
    ("env", "dsn"),
    [
        ({f"{P}DATABASE__DSN": BAD_SECRET_DSN}, None),
        ({"CLEANUP_WORKER_DSN": BAD_SECRET_DSN}, None),
        ({}, BAD_SECRET_DSN),
        ({}, f"{BAD_SECRET_DSN}?password={SECRET}"),
        ({f"{P}DATABASE__DSN": SECRET_DSN, f"{P}DATABASE__POOL_MIN_SIZE": "50"}, None),
        ({f"{P}DATABASE__PASSWORD": SECRET}, None),
        ({f"{P}DATABASE__DSN": f"password={SECRET}", f"{P}OUTBOX__BATCH_SIZE": "x"}, None),
        ({**OPENAI, f"{P}PROVIDERS__BACKENDS__OPENAI__API_KEY_ENV": SECRET}, None),
        ({**AZURE, f"{P}PROVIDERS__BACKENDS__AZURE__API_KEY_FILE": f"{SECRET}\0"}, None),
        ({**OPENAI, f"{P}PROVIDERS__TENANTS__{TENANT}__OPENAI__API_KEY_ENV": SECRET}, None),
        ({**OPENAI, f"{P}PROVIDERS__BACKENDS__OPENAI__SECRET": SECRET}, None),
        ({f"{P}OBSERVABILITY__LOG_LEVEL": f"{{password: {SECRET}}}"}, None),
    ],
)
def test_secrets_never_in_messages(env: dict[str, str], dsn: str | None) -> None:
    assert SECRET not in fail(env=env, dsn=dsn)


def test_secret_dsn_in_file_not_echoed(tmp_path: Path) -> None:
    assert SECRET not in fail(write(tmp_path, f"database:\n  dsn: {BAD_SECRET_DSN}\n"))
    assert SECRET not in fail(write(tmp_path, f"database:\n  password: {SECRET}\n"))
    # a YAML syntax error on the line holding the secret: the line itself is not quoted
    assert SECRET not in fail(write(tmp_path, f"database:\n  dsn: {SECRET_DSN}\n   bad: [\n"))


def test_secret_dsn_accepted_and_kept_verbatim() -> None:
    assert load_config(None, environ={}, dsn=SECRET_DSN).database.dsn == SECRET_DSN


# ------------------------------------------------------------------------------- redact_passwords


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (SECRET_DSN, "postgresql://app:***@db.internal:5432/chat"),
        (f"postgres://app:{SECRET}@h/db", "postgres://app:***@h/db"),
        (f"postgresql://:{SECRET}@h/db", "postgresql://:***@h/db"),
        (f"postgresql://app:p@{SECRET}@h/db", "postgresql://app:***@h/db"),
        (
            f"postgresql://h/db?user=a&password={SECRET}&sslmode=require",
            "postgresql://h/db?user=a&password=***&sslmode=require",
        ),
        (f"host=h user=a password={SECRET} dbname=d", "host=h user=a password=*** dbname=d"),
        (f"host=h password = '{SECRET} x' dbname=d", "host=h password = *** dbname=d"),
        (f"PGPASSWORD={SECRET}", "PGPASSWORD=***"),
        (f"https://u:{SECRET}@proxy.internal:8080", "https://u:***@proxy.internal:8080"),
        (
            f"a postgresql://a:{SECRET}@h/x and host=h password={SECRET}",
            "a postgresql://a:***@h/x and host=h password=***",
        ),
        ("postgresql://app@h:5432/db", "postgresql://app@h:5432/db"),
        ("postgresql://h:5432/db", "postgresql://h:5432/db"),
        ("postgresql:///cleanup_worker", "postgresql:///cleanup_worker"),
        (f'{{"password": "{SECRET}", "user": "a"}}', '{"password": ***, "user": "a"}'),
        (f"password: {SECRET}", "password: ***"),
        ("no secrets here", "no secrets here"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact_passwords(text) == expected
    assert SECRET not in redact_passwords(text)
