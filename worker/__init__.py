"""cleanup-worker: deletes provider files and vector stores of deleted chats via a PG outbox.

Layers, the life of a message, the tables and where to change what: docs/ARCHITECTURE.md.
"SPEC §N" in comments cites the product contract; docs/ARCHITECTURE.md maps each section to
what it requires and where this code implements it.
"""

__version__ = "0.1.0"
