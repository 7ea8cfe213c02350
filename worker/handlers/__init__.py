"""The two cleanup handlers (SPEC §5): attachment cleanup and chat cleanup.

Handlers read and write the chat service's rows through ``repository`` and call providers
through the ``Provider`` port; they return outcome values and never raise for expected trouble.
"""
