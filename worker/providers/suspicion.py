"""Route suspicion (SPEC §13): a route that only ever hears "not found" is probably wrong.

A key of the wrong OpenAI project or organization, or a tenant's endpoint that points at
another resource, answers the API's own not-found for every object: each 404 alone is
indistinguishable from "already deleted". So a route that answers not-found for more than
``threshold`` distinct objects in a row without one success is *suspected*: its not-founds
stop counting as done (``Transient(config)``) until one delete on it succeeds.
A wrong key therefore marks at most ``threshold`` rows done per replica, not all of them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

from worker.providers.results import ResourceKind
from worker.providers.routing import Route


class RouteHealthListener(Protocol):
    """Told when a route becomes suspected or recovers (metrics, the route_health table).

    Implementations must not raise for their own trouble (a database down): log and go on.
    """

    async def route_suspected(self, route: Route, distinct_not_found: int) -> None: ...

    async def route_recovered(self, route: Route) -> None: ...


# Enough for every delete of a long database outage at a route's rate; a few MB at most.
DELETED_HERE_REMEMBERED = 50_000


class NotFoundStreak:
    """Distinct objects a route answered not-found for since its last successful delete."""

    def __init__(self, threshold: int) -> None:
        if threshold < 1:
            raise ValueError(f"threshold must be >= 1, got {threshold}")
        self._threshold = threshold
        self._objects: set[tuple[ResourceKind, str]] = set()
        self._restored = 0
        self.suspected = False
        # Objects this route itself deleted (2xx) lately. When recording that delete failed (a
        # database outage, a lost lease) the message comes back and the repeat answers
        # not-found: that is the route's own earlier success, not a sign of a wrong key.
        self._deleted_here: OrderedDict[tuple[ResourceKind, str], None] = OrderedDict()

    def deleted(self, resource: ResourceKind, resource_id: str) -> None:
        """Remember an object this route deleted (bounded: the oldest are forgotten)."""
        self._deleted_here[(resource, resource_id)] = None
        self._deleted_here.move_to_end((resource, resource_id))
        while len(self._deleted_here) > DELETED_HERE_REMEMBERED:
            self._deleted_here.popitem(last=False)

    def deleted_here(self, resource: ResourceKind, resource_id: str) -> bool:
        """Whether this route deleted the object itself: its not-found is no strike."""
        return (resource, resource_id) in self._deleted_here

    @property
    def distinct(self) -> int:
        """Distinct not-found objects in the streak (as persisted, for a restored one)."""
        return max(len(self._objects), self._restored)

    def not_found(self, resource: ResourceKind, resource_id: str) -> bool:
        """Count one not-found; True when this one makes the route suspected."""
        if self.suspected:
            return False
        self._objects.add((resource, resource_id))
        self.suspected = len(self._objects) > self._threshold
        return self.suspected

    def succeeded(self) -> bool:
        """A delete worked: the streak ends; True when the route was suspected until now."""
        was_suspected = self.suspected
        self._objects.clear()
        self._restored = 0
        self.suspected = False
        return was_suspected

    def restore(self, distinct_not_found: int) -> None:
        """Start suspected (persisted by an earlier process for this very configuration)."""
        self.suspected = True
        self._restored = distinct_not_found
