"""Fixtures for the provider tests (helpers live in ``support``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest

from providers.support import ENV, MakeGateway, Upstream, deleted, script
from worker.config import ProvidersConfig
from worker.providers.gateway import ProviderGateway


@pytest.fixture
async def make_gateway() -> AsyncIterator[MakeGateway]:
    """Builds gateways on a mock transport (environ = ``ENV`` unless given); closes them after."""
    built: list[ProviderGateway] = []

    def make(
        config: ProvidersConfig, upstream: Upstream | None = None, **kwargs: Any
    ) -> ProviderGateway:
        handler = upstream if upstream is not None else script(deleted())
        kwargs.setdefault("environ", ENV)
        transport = httpx2.MockTransport(handler)
        kwargs.setdefault("http_client", httpx2.AsyncClient(transport=transport))
        gateway = ProviderGateway(config, **kwargs)
        built.append(gateway)
        return gateway

    yield make
    for gateway in built:
        await gateway.aclose()
