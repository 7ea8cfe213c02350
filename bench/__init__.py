"""Benchmarks of cleanup-worker (issue "Performance"): ``python -m bench [B1 ...]``.

Every number printed is a ratio or a pair measured in the same run, on the same machine and the
same database server, so that a slower or busier machine moves both sides alike. Nothing here
asserts a time; ``tests/test_bench_smoke.py`` only proves that each benchmark runs and produces
numbers at toy size. ``docs/PERFORMANCE.md`` explains the benchmarks and publishes results.

Layout: ``cli`` (arguments, the table) -> ``scenarios`` (B1..B7) -> ``sandbox`` (PostgreSQL,
the fake provider and worker processes) + ``seed`` (set-based backlogs) + ``probes`` (progress,
CPU, RSS, database counters); ``worker_proc`` is the worker process the harness spawns for the
no-op, original-model and raw-SQL modes (the real handlers run as ``cleanup-worker run``).
"""
