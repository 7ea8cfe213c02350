"""cleanup-worker: deletes provider files and vector stores of deleted chats via a PG outbox."""

__version__ = "0.1.0"
