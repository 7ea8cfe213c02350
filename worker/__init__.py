"""cleanup-worker: deletes provider files and vector stores of soft-deleted chats via a PostgreSQL outbox."""

__version__ = "0.1.0"
