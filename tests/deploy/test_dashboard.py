"""The Grafana dashboard works with and without a ``namespace`` label (Kubernetes-style scraping
or not), and answers the first question an operator asks: how old is each queue's oldest
unfinished message. (scripts/check-deploy.sh parses every expression with a PromQL parser.)"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((ROOT / "deploy/grafana/cleanup-worker.json").read_text(encoding="utf-8"))


def _checks() -> Any:
    spec = importlib.util.spec_from_file_location("deploy_checks", ROOT / "deploy/tests/checks.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from _panels(panel.get("panels", []) or [])


def _exprs() -> list[str]:
    return [
        t["expr"] for p in _panels(DASHBOARD["panels"]) for t in p.get("targets", []) if "expr" in t
    ]


def _as_grafana_renders(expr: str, namespace_value: str) -> str:
    """What Grafana sends for ``${namespace:regex}``: the chosen value(s) as a regex."""
    return expr.replace("${namespace:regex}", namespace_value)


def test_every_selector_matches_series_with_and_without_a_namespace() -> None:
    checks = _checks()
    exprs = _exprs()
    assert len(exprs) > 30
    for expr in exprs:
        assert "namespace" in expr, expr
        assert checks.namespace_filter_problems(expr.replace("${namespace:regex}", "x")) == []
        for chosen, label in [("(mini-chat)", "mini-chat"), ("", ""), (".*", "")]:
            rendered = _as_grafana_renders(expr, chosen)
            [(op, value)] = set(checks.NAMESPACE_MATCHER.findall(rendered))
            assert op == "=~"
            assert re.fullmatch(value, label), (chosen, label, rendered)
    assert re.fullmatch("(mini-chat)|", "other") is None  # a chosen namespace still filters


def test_the_old_filter_is_flagged() -> None:
    problems = _checks().namespace_filter_problems('up{namespace=~"x"}')
    assert problems
    assert "without a namespace label" in problems[0]


def test_per_queue_oldest_age_in_the_overview() -> None:
    [panel] = [
        p
        for p in _panels(DASHBOARD["panels"])
        if p["title"] == "Oldest unfinished message per queue"
    ]
    [target] = panel["targets"]
    assert target["expr"].startswith("max by (queue) (mini_chat_outbox_oldest_pending_age_seconds{")
    assert target["legendFormat"] == "{{queue}}"
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, 1800, 3600]
    assert panel["gridPos"]["y"] < 10  # near the top, under the overview stats


def test_panels_do_not_overlap() -> None:
    cells: set[tuple[int, int]] = set()
    for panel in DASHBOARD["panels"]:
        g = panel["gridPos"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not mine & cells, panel["title"]
        cells |= mine
