"""Provider layer: deletes OpenAI / Azure OpenAI files and vector stores per tenant (SPEC §6).

The only package that imports ``openai`` / ``httpx2``; it hands back ``DeleteResult`` values.
"""

from __future__ import annotations

from worker.providers.gateway import ProviderGateway
from worker.providers.limits import BreakerPolicy
from worker.providers.results import (
    Deleted,
    DeleteResult,
    Permanent,
    ProviderObserver,
    Transient,
    outcome_label,
)
from worker.providers.retrying import RetryPolicy
from worker.providers.routing import Route

__all__ = [
    "BreakerPolicy",
    "DeleteResult",
    "Deleted",
    "Permanent",
    "ProviderGateway",
    "ProviderObserver",
    "RetryPolicy",
    "Route",
    "Transient",
    "outcome_label",
]
