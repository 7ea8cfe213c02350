"""Provider layer: deletes OpenAI / Azure OpenAI files and vector stores per tenant (SPEC §6).

The only package that imports ``openai`` / ``httpx2``; it hands back ``DeleteResult`` values.
``ProviderGateway`` lives in ``worker.providers.gateway`` and is not re-exported here: importing
it loads the SDK (seconds), which commands that never call a provider should not pay for.
"""

from __future__ import annotations

from worker.providers.results import (
    Deleted,
    DeleteResult,
    Permanent,
    ProviderObserver,
    Transient,
    outcome_label,
)
from worker.providers.retrying import CallRetryPolicy
from worker.providers.routing import Route

__all__ = [
    "CallRetryPolicy",
    "DeleteResult",
    "Deleted",
    "Permanent",
    "ProviderObserver",
    "Route",
    "Transient",
    "outcome_label",
]
