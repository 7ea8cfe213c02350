"""The configuration: a frozen tree validated once at the CLI edge and passed down explicitly.

``load_config`` layers, lowest to highest: dataclass defaults, the YAML file (``path`` or env
``CLEANUP_WORKER_CONFIG``; none at all means defaults), env ``CLEANUP_WORKER__SECTION__KEY``
overrides (levels split by ``__``, key names case-insensitive, values parsed as YAML scalars),
env ``CLEANUP_WORKER_DSN``, then the ``dsn`` argument (``--dsn``). Every problem is one
``ConfigError`` line naming the key path and where the value came from, with a did-you-mean for
an unknown key; values of secret-ish keys are never echoed and DSNs are shown through
``redact_passwords``. Ranges: ``config.example.yaml``. Every rule lives here; the provider layer
trusts a loaded configuration.

One way down: ``loader`` (sources, merge, build, check) -> ``rules`` (what a value and a route
must satisfy) -> ``tree`` (the dataclasses, the queue pair, the key sources); ``dsn`` (password
masking, libpq's verdict on a DSN) is the only module that touches the database driver.

Hand-written rather than pydantic(-settings), after a prototype (issue 13): pydantic reports
every problem as a multi-line block ("1 validation error for Settings / outbox.lease_secnds /
Extra inputs are not permitted [type=extra_forbidden, input_value=10, ...]"), cannot say whether
a value came from the file or from which env var, has no did-you-mean, and echoes the input
value (a key or DSN password) unless every field is a SecretStr. Keeping today's one-line
errors would mean walking its error list and tracking sources beside it: the size of this
loader, plus pydantic-settings as a new dependency (pydantic itself comes with the SDK).
msgspec (one line, ``- at `$.outbox` ``) has no sources, no did-you-mean and no env layer
either, so the loading would stay ours.
"""

from worker.config.dsn import redact_passwords
from worker.config.loader import ENV_CONFIG, ENV_DSN, ENV_PREFIX, load_config
from worker.config.rules import AZURE_MIN_API_VERSION, azure_api_version_problem
from worker.config.tree import (
    AZURE_V1_PATH,
    LOG_LEVELS,
    OPENAI_DEFAULT_BASE_URL,
    AuditConfig,
    BackendConfig,
    BackendKind,
    CircuitBreakerConfig,
    CleanupConfig,
    Config,
    DatabaseConfig,
    KeySource,
    KeyUnavailable,
    LogFormat,
    ObservabilityConfig,
    OutboxConfig,
    ProvidersConfig,
    QueueConfig,
    Queues,
    RetryConfig,
    RouteSuspicionConfig,
    TenantOverride,
    is_azure_v1_url,
)

__all__ = [
    "AZURE_MIN_API_VERSION",
    "AZURE_V1_PATH",
    "ENV_CONFIG",
    "ENV_DSN",
    "ENV_PREFIX",
    "LOG_LEVELS",
    "OPENAI_DEFAULT_BASE_URL",
    "AuditConfig",
    "BackendConfig",
    "BackendKind",
    "CircuitBreakerConfig",
    "CleanupConfig",
    "Config",
    "DatabaseConfig",
    "KeySource",
    "KeyUnavailable",
    "LogFormat",
    "ObservabilityConfig",
    "OutboxConfig",
    "ProvidersConfig",
    "QueueConfig",
    "Queues",
    "RetryConfig",
    "RouteSuspicionConfig",
    "TenantOverride",
    "azure_api_version_problem",
    "is_azure_v1_url",
    "load_config",
    "redact_passwords",
]
