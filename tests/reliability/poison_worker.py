"""``python -m worker`` with a test-only poison pill, for reliability scenario 12.

Handling an ``attachment_deleted`` message whose ``attachment_id`` is listed in
``RELIAB_POISON_ATTACHMENTS`` (comma-separated) SIGKILLs the process, every time, before the
handler does anything: what a payload that makes a native library segfault, or a handler
that the kernel OOM-kills, does to a real replica. No outcome is ever reported for it, so only
the worker's poison-pill isolation (SPEC §13, ``outbox.max_handler_crashes``) can get past it.
The product code is unchanged; this wrapper only patches the handler class before ``main``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from worker.cli import main
from worker.handlers.attachment import AttachmentCleanupHandler
from worker.models import Message, Outcome

ENV = "RELIAB_POISON_ATTACHMENTS"
POISON = frozenset(filter(None, os.environ.get(ENV, "").split(",")))
_handle = AttachmentCleanupHandler.__call__


def is_poison(payload: bytes) -> bool:
    try:
        doc = json.loads(payload)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("attachment_id") in POISON


async def _poisoned(self: AttachmentCleanupHandler, message: Message) -> Outcome:
    if is_poison(message.payload):
        os.kill(os.getpid(), signal.SIGKILL)
    return await _handle(self, message)


AttachmentCleanupHandler.__call__ = _poisoned  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
