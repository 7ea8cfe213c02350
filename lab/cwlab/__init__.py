"""The lab: a throwaway PostgreSQL, a fake OpenAI-compatible provider, the demo's world.

Tooling for the demo and the tests, not the product: a separate distribution
(lab/pyproject.toml) installed by the ``demo`` extra and the dev group, never in the production
image. It imports the product; the product imports it only in ``cleanup-worker demo``.
"""
