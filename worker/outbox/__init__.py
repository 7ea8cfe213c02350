"""The transactional-outbox engine (SPEC §4), compatible with the original modkit-db tables.

enqueue ─► incoming ─► sequencer ─► outgoing ─► processor (lease, batch, ack) ─► handlers
                                          retry table ◄─┘  └─► dead letters ─► replay

Leases carry a fencing token per acquisition (processor, retrier); a batch redelivered after an
unacked lease is handled one message at a time so a poison pill is found (isolation).
"""
