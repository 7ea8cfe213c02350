"""Azure endpoints need https:// (the docs said so, the loader used to accept http://): the
api-key header must not cross a network in clear text. Loopback http:// stays accepted for the
local test and demo servers."""

from __future__ import annotations

import pytest

from worker.config import load_config
from worker.errors import ConfigError

P = "CLEANUP_WORKER__"
TENANT = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"


def _azure(endpoint: str, *, override: str | None = None) -> dict[str, str]:
    env = {
        f"{P}PROVIDERS__BACKENDS__AZURE__KIND": "azure",
        f"{P}PROVIDERS__BACKENDS__AZURE__ENDPOINT": endpoint,
        f"{P}PROVIDERS__BACKENDS__AZURE__API_VERSION": "2025-03-01-preview",
        f"{P}PROVIDERS__BACKENDS__AZURE__API_KEY_ENV": "AZURE_KEY",
    }
    if override is not None:
        env[f"{P}PROVIDERS__TENANTS__{TENANT}__AZURE__ENDPOINT"] = override
    return env


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://r.openai.azure.com",
        "http://127.0.0.1:8080/azure",
        "http://localhost:9/x",
        "http://[::1]:8080",
    ],
)
def test_https_or_loopback_is_accepted(endpoint: str) -> None:
    cfg = load_config(None, environ=_azure(endpoint))
    assert cfg.providers.backends["azure"].endpoint == endpoint


@pytest.mark.parametrize(
    ("env", "key"),
    [
        (_azure("http://r.openai.azure.com"), "providers.backends.azure.endpoint"),
        (_azure("http://10.0.0.7:8080"), "providers.backends.azure.endpoint"),
        (
            _azure("https://r.openai.azure.com", override="http://tenant-x.openai.azure.com"),
            f"providers.tenants.{TENANT}.azure.endpoint",
        ),
    ],
    ids=["public-host", "private-ip", "tenant-override"],
)
def test_plain_http_to_another_host_is_refused(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ=env)
    message = str(info.value)
    assert key in message
    assert "Azure endpoints need https://" in message
    assert "\n" not in message


def test_openai_base_url_may_stay_http() -> None:
    """An in-cluster OpenAI-compatible proxy over plain http is a deliberate choice; not Azure."""
    env = {
        f"{P}PROVIDERS__BACKENDS__OPENAI__KIND": "openai",
        f"{P}PROVIDERS__BACKENDS__OPENAI__BASE_URL": "http://proxy.internal/v1",
        f"{P}PROVIDERS__BACKENDS__OPENAI__API_KEY_ENV": "OPENAI_KEY",
    }
    assert load_config(None, environ=env).providers.backends["openai"].base_url.startswith("http:")
