"""A provider route's rules are configuration rules: a bad route fails at load, in one line
naming the key path and its source, and the router trusts what loaded (issue 13, "one
validator"). The rules marked "was routing's" were checked only when the router was built, so
a bad configuration loaded, and `check-config` printed "configuration: valid" above the error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.config import load_config
from worker.errors import ConfigError

TENANT = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"
SECRET = "s3cr3t-XYZ"
AZURE = {
    "kind": "azure",
    "endpoint": "https://r.openai.azure.test/",
    "api_version": "2025-03-01-preview",
    "api_key_env": "AZURE_KEY",
}
AZURE_V1 = {"kind": "azure", "base_url": "https://r.openai.azure.test/openai/v1/"}


def _fail(tmp_path, backends: dict, tenants: dict | None = None) -> str:
    """Load a file with these providers; expect one ConfigError line naming the file."""
    path = tmp_path / "config.yaml"
    providers = {"backends": backends, **({"tenants": tenants} if tenants else {})}
    path.write_text(yaml.safe_dump({"providers": providers}), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert message.startswith("config error: "), message
    assert "\n" not in message
    assert message.endswith(f"(from {path})"), message
    return message.removeprefix("config error: ")


@pytest.mark.parametrize(
    ("backends", "tenants", "expected"),
    [
        # was routing's: the SDK adds /openai/... itself, and Azure 404s the doubled path
        (
            {"azure": {**AZURE, "endpoint": "https://r.test/openai"}},
            None,
            "providers.backends.azure.endpoint: give the resource root",
        ),
        (
            {"azure": {**AZURE, "endpoint": "https://r.test/x/openai/deployments"}},
            None,
            "providers.backends.azure.endpoint: give the resource root",
        ),
        # was routing's: a URL the SDK cannot use as a base
        (
            {"openai": {"kind": "openai", "base_url": "https://api.test:99999/v1"}},
            None,
            "providers.backends.openai.base_url: not a valid URL",
        ),
        (
            {"openai": {"kind": "openai", "base_url": "https://api.test/v1?x=1"}},
            None,
            "providers.backends.openai.base_url: must not have a query or fragment",
        ),
        (
            {"openai": {"kind": "openai", "base_url": "https://api.test/v1#top"}},
            None,
            "providers.backends.openai.base_url: must not have a query or fragment",
        ),
        (
            {"openai": {"kind": "openai", "base_url": "https://:443/v1"}},
            None,
            "providers.backends.openai.base_url: must be an http(s) URL with a host",
        ),
        (
            {"openai": {"kind": "openai", "api_key_env": "K"}},
            {TENANT: {"openai": {"base_url": "https://user@c.proxy.test/v1"}}},
            f"providers.tenants.{TENANT}.openai.base_url: must not embed credentials",
        ),
        # was routing's: what a tenant's route lacks once it inherits from its backend
        (
            {"openai": {"kind": "openai"}},
            {TENANT: {"openai": {"base_url": "https://c.proxy.test/v1"}}},
            f"providers.tenants.{TENANT}.openai.api_key_env: required: the backend 'openai' "
            "has no key",
        ),
        (
            {"azure": AZURE_V1},
            {TENANT: {"azure": {"endpoint": "https://t.openai.azure.test/", "api_key_env": "K"}}},
            f"providers.tenants.{TENANT}.azure.api_version: required with an azure endpoint",
        ),
        (
            {"azure": {**AZURE_V1, "api_key_env": "K"}},
            {TENANT: {"azure": {"api_version": "2025-03-01-preview"}}},
            f"providers.tenants.{TENANT}.azure.api_version: the v1 GA API (base_url) takes none",
        ),
        # checked at load already, and by the router once more until issue 13
        (
            {"azure": {**AZURE, "api_version": None}},
            None,
            "providers.backends.azure.api_version: required with an azure endpoint",
        ),
        (
            {"azure": {**AZURE, "api_version": "2025-13"}},
            None,
            "providers.backends.azure.api_version: '2025-13' is not a dated Azure api-version",
        ),
        (
            {"azure": {**AZURE, "endpoint": "ftp://r.test/"}},
            None,
            "providers.backends.azure.endpoint: expected an http(s) URL, got 'ftp://r.test/'",
        ),
        (
            {"azure": {**AZURE, "endpoint": "r.openai.azure.test"}},
            None,
            "providers.backends.azure.endpoint: expected an http(s) URL",
        ),
        (
            {"azure": {**AZURE, "base_url": "https://r.test/openai/v1/"}},
            None,
            "providers.backends.azure.base_url: set endpoint (classic API) or base_url",
        ),
        (
            {"azure": {**AZURE, "api_key_file": "/k"}},
            None,
            "providers.backends.azure.api_key_file: conflicts with api_key_env",
        ),
        (
            {"azure": {**AZURE, "max_concurrency": 0}},
            None,
            "providers.backends.azure.max_concurrency: expected an integer in 1..1024, got 0",
        ),
        (
            {"openai": {"kind": "openai", "endpoint": "https://x.test/"}},
            None,
            "providers.backends.openai.endpoint: not used by openai backends",
        ),
        (
            {"azure": AZURE},
            {"not-a-uuid": {"azure": {"api_key_env": "K"}}},
            "providers.tenants.not-a-uuid: tenant keys must be UUIDs",
        ),
        (
            {"azure": AZURE},
            {TENANT: {"openai": {"api_key_env": "K"}}},
            f"providers.tenants.{TENANT}.openai: no backend has this label",
        ),
        (
            {"azure": AZURE},
            {TENANT: {"azure": {"api_version": "bogus"}}},
            f"providers.tenants.{TENANT}.azure.api_version: 'bogus' is not a dated Azure",
        ),
        (
            {"azure": {"kind": "azure", "api_version": "2025-03-01-preview"}},
            {TENANT: {"azure": {"api_key_env": "K"}}},
            "providers.backends.azure.endpoint: required",
        ),
    ],
)
def test_bad_route_fails_at_load_naming_the_key(
    tmp_path: Path, backends: dict[str, Any], tenants: dict[str, Any] | None, expected: str
) -> None:
    message = _fail(tmp_path, backends, tenants)
    assert message.startswith(expected), message


def test_credentials_in_a_url_are_refused_without_echoing_them(tmp_path: Path) -> None:
    backends = {"openai": {"kind": "openai", "base_url": f"https://user:{SECRET}@api.test/v1"}}
    message = _fail(tmp_path, backends)
    assert message.startswith("providers.backends.openai.base_url: must not embed credentials")
    assert SECRET not in message


@pytest.mark.parametrize(
    "override",
    [
        {"api_key_env": "T_KEY"},  # the backend's URL, the tenant's key
        {"endpoint": "https://t.openai.azure.test/", "api_key_file": "/run/t"},  # own resource
        {"max_rps": 5, "api_key_env": "T_KEY"},
    ],
)
def test_an_override_that_completes_its_backend_loads(tmp_path: Path, override: dict) -> None:
    """A keyless classic backend serves tenants whose override brings the key; the endpoint
    and api-version they inherit make a whole route."""
    path = tmp_path / "config.yaml"
    backend = {k: v for k, v in AZURE.items() if k != "api_key_env"}
    providers = {"backends": {"azure": backend}, "tenants": {TENANT: {"azure": override}}}
    path.write_text(yaml.safe_dump({"providers": providers}), encoding="utf-8")
    cfg = load_config(path, environ={})
    route = cfg.providers.backends["azure"].with_override(cfg.providers.tenants[TENANT]["azure"])
    assert route.key_source is not None
    assert (route.url, route.api_version) == (
        override.get("endpoint", AZURE["endpoint"]),
        AZURE["api_version"],
    )
