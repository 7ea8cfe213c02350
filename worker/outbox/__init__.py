"""The transactional-outbox engine (SPEC §4), compatible with the original modkit-db tables.

enqueue ─► incoming ─► sequencer ─► outgoing ─► processor (lease, batch, ack) ─► handlers
                                          retry table ◄─┘  └─► dead letters ─► replay
"""
