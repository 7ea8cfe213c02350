"""Static checks of deploy/ and the Dockerfile that no off-the-shelf tool makes.

Run by scripts/check-deploy.sh inside its tools venv (PyYAML, promql-parser); each
subcommand prints its findings and exits non-zero if there are any. Standard library plus
those two packages only, so it never imports the worker package.

    checks.py split RENDERED.yaml OUTDIR       core kinds -> OUTDIR/core, CRDs -> OUTDIR/crd
    checks.py policy OVERLAY RENDERED.yaml CONFIG.yaml
    checks.py extract-rules PROMETHEUSRULE.yaml OUT.yaml
    checks.py alerts PROMETHEUSRULE.yaml TESTS.yaml RUNBOOKS.md
    checks.py metrics PROMETHEUSRULE.yaml DASHBOARD.json
    checks.py dockerfile Dockerfile .dockerignore
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

# --------------------------------------------------------------------------------------------
# What may appear in rendered manifests

CORE_KINDS = {
    "ConfigMap",
    "CronJob",
    "Deployment",
    "Job",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "Secret",
    "Service",
    "ServiceAccount",
}
# CRDs validated by deploy/tests/validate-crds.mjs (kubernetes-validate skips them).
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
}
# Created out of band (docs/deploy.md#secrets): references to them need no object in the render.
EXTERNAL_SECRETS = {
    "cleanup-worker-db": {"dsn"},  # the worker's role (DML)
    "cleanup-worker-db-migrate": {"dsn"},  # migrate's role (DDL)
    "cleanup-worker-provider-keys": set(),
}
BARE_IMAGE = "cleanup-worker"

# --------------------------------------------------------------------------------------------
# The product's metrics (SPEC §9 and the worker's own); the only names rules and dashboards
# may use. Histograms also expose _bucket/_sum/_count.

COUNTERS = {
    "mini_chat_cleanup_completed_total",
    "mini_chat_cleanup_failed_total",
    "mini_chat_cleanup_retry_total",
    "mini_chat_cleanup_vector_store_with_failed_attachments_total",
    "mini_chat_outbox_handler_total",
    "mini_chat_outbox_lease_lost_total",
    "mini_chat_outbox_dead_lettered_total",
    "mini_chat_provider_requests_total",
    "mini_chat_provider_route_suspected_total",
}
GAUGES = {
    "mini_chat_cleanup_backlog",
    "mini_chat_outbox_dead_letter_backlog",
    "mini_chat_outbox_dead_letter_oldest_age_seconds",
    "mini_chat_outbox_backlog",
    "mini_chat_outbox_oldest_pending_age_seconds",
    "mini_chat_outbox_retry_rows",
    "mini_chat_worker_build_info",
    "mini_chat_worker_last_loop_timestamp_seconds",
    "mini_chat_worker_database_up",
    "mini_chat_provider_routes_suspected",
    "mini_chat_cleanup_leaks_found",
    "mini_chat_reconcile_last_report_timestamp_seconds",
    "mini_chat_reconcile_routes_failed",
}
HISTOGRAMS = {"mini_chat_cleanup_latency_seconds", "mini_chat_provider_request_duration_seconds"}
PROMETHEUS_BUILTINS = {"up"}  # written by Prometheus itself for every target

# Label values with a fixed vocabulary: a matcher on another value is a typo.
LABEL_VALUES = {
    "state": {"pending", "failed", "due", "parked"},
    "resource_type": {"file", "vector_store"},
    # handler kinds (dead letters), and cleanup_leaks_found's object kinds
    "kind": {"attachment_cleanup", "chat_cleanup", "file", "vector_store", "unreferenced_file"},
    "result": {"success", "retry", "reject"},
    "reason": {
        "rate_limited",
        "server_error",
        "timeout",
        "connection",
        "auth",
        "conflict",
        "not_deleted",
        "config",
        "circuit_open",
        "database",
        "pending",
        "handler_timeout",
        "handler_error",
    },
}
LABEL_VALUES["outcome"] = {"deleted", "not_found", "permanent"} | LABEL_VALUES["reason"]


def allowed_metric_names() -> set[str]:
    names = set(COUNTERS) | set(GAUGES) | PROMETHEUS_BUILTINS
    for h in HISTOGRAMS:
        names |= {f"{h}_bucket", f"{h}_sum", f"{h}_count"}
    return names


# --------------------------------------------------------------------------------------------
# helpers


class Findings:
    def __init__(self, what: str) -> None:
        self.what = what
        self.items: list[str] = []

    def add(self, msg: str) -> None:
        self.items.append(msg)

    def check(self, ok: bool, msg: str) -> None:
        if not ok:
            self.add(msg)

    def finish(self, ok_detail: str = "") -> int:
        for item in self.items:
            print(f"  {self.what}: {item}", file=sys.stderr)
        if self.items:
            return 1
        if ok_detail:
            print(ok_detail)
        return 0


def load_docs(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d]


def ident(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def pod_template(doc: dict[str, Any]) -> dict[str, Any] | None:
    kind = doc.get("kind")
    if kind in ("Deployment", "Job"):
        tmpl: dict[str, Any] = doc["spec"]["template"]
        return tmpl
    if kind == "CronJob":
        tmpl = doc["spec"]["jobTemplate"]["spec"]["template"]
        return tmpl
    return None


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    tmpl = pod_template(doc)
    return None if tmpl is None else dict(tmpl["spec"])


def pod_labels(doc: dict[str, Any]) -> dict[str, str]:
    tmpl = pod_template(doc)
    return {} if tmpl is None else dict(tmpl["metadata"].get("labels", {}))


def containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec.get("initContainers", []) or []
    yield from spec.get("containers", []) or []


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# --------------------------------------------------------------------------------------------
# split


def cmd_split(rendered: str, outdir: str) -> int:
    f = Findings("split")
    out = Path(outdir)
    (out / "core").mkdir(parents=True, exist_ok=True)
    (out / "crd").mkdir(parents=True, exist_ok=True)
    n_core = n_crd = 0
    for i, doc in enumerate(load_docs(rendered)):
        kind, api = doc.get("kind"), doc.get("apiVersion")
        name = f"{i:02d}-{kind}-{doc.get('metadata', {}).get('name')}"
        if kind in CORE_KINDS:
            (out / "core" / f"{name}.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
            n_core += 1
        elif (api, kind) in CRD_KINDS:
            (out / "crd" / f"{name}.json").write_text(json.dumps(doc), encoding="utf-8")
            n_crd += 1
        else:
            f.add(
                f"{api} {kind} is validated by nothing: add it to CORE_KINDS or CRD_KINDS "
                "(and a model to validate-crds.mjs)"
            )
    return f.finish(f"{n_core} core, {n_crd} CRD objects")


# --------------------------------------------------------------------------------------------
# policy: the properties the issue asks for, on the rendered output of each kustomization


def cmd_policy(overlay: str, rendered: str, config_path: str) -> int:
    f = Findings(f"policy[{overlay}]")
    docs = load_docs(rendered)
    with open(config_path, encoding="utf-8") as fh:
        config = yaml.safe_load(fh)
    lease = float(config["outbox"]["lease_seconds"])
    grace = float(config["outbox"]["shutdown_grace_seconds"])
    http_port = int(config["observability"]["http_port"])

    by_kind: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}

    namespaces = {d["metadata"].get("namespace") for d in docs}
    f.check(
        len(namespaces) == 1 and None not in namespaces,
        f"all objects must share one namespace, found {sorted(map(str, namespaces))}",
    )
    for d in docs:
        labels = d["metadata"].get("labels", {})
        f.check(
            labels.get("app.kubernetes.io/name") == "cleanup-worker",
            f"{ident(d)}: missing label app.kubernetes.io/name=cleanup-worker",
        )

    deployments = by_kind.get("Deployment", [])
    f.check(len(deployments) == 1, f"expected exactly one Deployment, got {len(deployments)}")
    for d in docs:
        spec = pod_spec(d)
        if spec is None:
            continue
        where = ident(d)
        tgp = spec.get("terminationGracePeriodSeconds", 30)
        f.check(
            tgp > lease + grace,
            f"{where}: terminationGracePeriodSeconds {tgp} must exceed lease_seconds + "
            f"shutdown_grace_seconds ({lease:g} + {grace:g})",
        )
        f.check(
            spec.get("automountServiceAccountToken") is False,
            f"{where}: automountServiceAccountToken must be false",
        )
        sa = spec.get("serviceAccountName")
        f.check(("ServiceAccount", sa) in names, f"{where}: ServiceAccount {sa!r} not rendered")
        psc = spec.get("securityContext", {})
        f.check(psc.get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot must be true")
        f.check(
            isinstance(psc.get("runAsUser"), int) and psc["runAsUser"] > 0,
            f"{where}: pod runAsUser must be a non-zero uid",
        )
        f.check(
            psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
            f"{where}: pod seccompProfile must be RuntimeDefault",
        )
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for v in volumes.values():
            if "configMap" in v:
                cm = v["configMap"]["name"]
                f.check(
                    ("ConfigMap", cm) in names,
                    f"{where}: volume {v['name']} mounts "
                    f"ConfigMap {cm!r}, which is not rendered (generator hash not applied?)",
                )
            if "secret" in v:
                sn = v["secret"]["secretName"]
                f.check(
                    sn in EXTERNAL_SECRETS or ("Secret", sn) in names,
                    f"{where}: unknown Secret {sn!r}",
                )
        f.check(
            any(
                c.get("volumeMounts") and any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])
                for c in containers(spec)
            ),
            f"{where}: no writable /tmp mount",
        )
        for c in containers(spec):
            cw = f"{where} container {c['name']}"
            image = c.get("image", "")
            f.check(
                (image != BARE_IMAGE and ":" in image.rsplit("/", 1)[-1]) or "@" in image,
                f"{cw}: image {image!r} is not pinned (components/defaults images: entry "
                "not applied?)",
            )
            f.check(not image.endswith(":latest"), f"{cw}: image uses :latest")
            sc = c.get("securityContext", {})
            f.check(
                sc.get("allowPrivilegeEscalation") is False,
                f"{cw}: allowPrivilegeEscalation must be false",
            )
            f.check(
                sc.get("readOnlyRootFilesystem") is True,
                f"{cw}: readOnlyRootFilesystem must be true",
            )
            f.check(
                sc.get("capabilities", {}).get("drop") == ["ALL"],
                f"{cw}: capabilities must drop ALL",
            )
            f.check(not sc.get("privileged", False), f"{cw}: must not be privileged")
            res = c.get("resources", {})
            f.check(
                bool(res.get("requests", {}).get("cpu"))
                and bool(res.get("requests", {}).get("memory")),
                f"{cw}: cpu and memory requests required",
            )
            f.check(bool(res.get("limits", {}).get("memory")), f"{cw}: memory limit required")
            for m in c.get("volumeMounts", []):
                f.check(m["name"] in volumes, f"{cw}: mounts undefined volume {m['name']!r}")
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    keys = EXTERNAL_SECRETS.get(ref["name"])
                    f.check(
                        keys is not None and (not keys or ref["key"] in keys),
                        f"{cw}: env {e['name']} refers to unknown secret key "
                        f"{ref['name']}/{ref['key']}",
                    )
            args = c.get("args", [])
            if args[:1] == ["reconcile"] and d["kind"] == "CronJob":
                job_spec = d["spec"]["jobTemplate"]["spec"]
                f.check(
                    "--json" in args and job_spec.get("activeDeadlineSeconds") is not None,
                    f"{cw}: expected `reconcile ... --json` with an activeDeadlineSeconds",
                )
            elif d["kind"] in ("Job", "CronJob") and c in spec.get("containers", []):
                f.check(
                    args[:1] == ["drain"]
                    and "--until-empty" in args
                    and "--json" in args
                    and "--max-seconds" in args,
                    f"{cw}: expected `drain --until-empty --max-seconds N --json`, got {args}",
                )
                if "--max-seconds" in args:
                    max_s = int(args[args.index("--max-seconds") + 1])
                    job_spec = d["spec"] if d["kind"] == "Job" else d["spec"]["jobTemplate"]["spec"]
                    ads = job_spec.get("activeDeadlineSeconds")
                    f.check(
                        ads is not None and ads > max_s,
                        f"{cw}: activeDeadlineSeconds {ads} must exceed --max-seconds {max_s}",
                    )

    for d in deployments:
        spec = pod_spec(d)
        assert spec is not None
        where = ident(d)
        labels = pod_labels(d)
        f.check(
            selects(d["spec"]["selector"]["matchLabels"], labels),
            f"{where}: selector does not match its pod template labels",
        )
        mains = spec.get("containers", [])
        f.check(len(mains) == 1, f"{where}: expected one container")
        main = mains[0]
        f.check(main.get("args") == ["run"], f"{where}: main container must run `run`")
        f.check(
            any(c.get("args") == ["migrate"] for c in spec.get("initContainers", [])),
            f"{where}: a `migrate` initContainer is expected",
        )
        ports = {p["name"]: p["containerPort"] for p in main.get("ports", [])}
        f.check(
            ports.get("metrics") == http_port,
            f"{where}: container port `metrics` must be observability.http_port {http_port}",
        )
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            got = main.get(probe, {}).get("httpGet", {})
            f.check(
                got.get("path") == path and got.get("port") == "metrics",
                f"{where}: {probe} must GET {path} on port `metrics`",
            )
        tsc = {
            t["topologyKey"]
            for t in spec.get("topologySpreadConstraints", [])
            if selects(t.get("labelSelector", {}).get("matchLabels", {}), labels)
        }
        f.check(
            {"topology.kubernetes.io/zone", "kubernetes.io/hostname"} <= tsc,
            f"{where}: topology spread by zone and hostname (matching its pods) expected",
        )
        has_so = "ScaledObject" in by_kind
        if has_so:
            f.check(
                "replicas" not in d["spec"],
                f"{where}: KEDA owns replicas; spec.replicas must be removed in this overlay",
            )
        else:
            f.check(
                d["spec"].get("replicas", 1) >= 2,
                f"{where}: several replicas expected without KEDA",
            )
        for svc in by_kind.get("Service", []):
            f.check(
                selects(svc["spec"]["selector"], labels),
                f"{ident(svc)}: selector does not match the Deployment's pods",
            )
            f.check(
                any(p.get("targetPort") == "metrics" for p in svc["spec"]["ports"]),
                f"{ident(svc)}: needs a port targeting `metrics`",
            )
            f.check(
                svc["spec"].get("publishNotReadyAddresses") is True,
                f"{ident(svc)}: publishNotReadyAddresses must be true (scrape unready pods)",
            )
        for pdb in by_kind.get("PodDisruptionBudget", []):
            f.check(
                selects(pdb["spec"]["selector"]["matchLabels"], labels),
                f"{ident(pdb)}: selector does not match the Deployment's pods",
            )
        for np in by_kind.get("NetworkPolicy", []):
            f.check(
                selects(np["spec"]["podSelector"]["matchLabels"], labels),
                f"{ident(np)}: podSelector does not match the Deployment's pods",
            )
            egress = {
                p.get("port") for r in np["spec"].get("egress", []) for p in r.get("ports", [])
            }
            f.check({53, 5432, 443} <= egress, f"{ident(np)}: egress must allow 53, 5432, 443")
        for sm in by_kind.get("ServiceMonitor", []):
            svcs = [
                s
                for s in by_kind.get("Service", [])
                if selects(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
            ]
            f.check(len(svcs) == 1, f"{ident(sm)}: must select exactly one Service")
            for ep in sm["spec"]["endpoints"]:
                f.check(
                    any(ep.get("port") == p.get("name") for s in svcs for p in s["spec"]["ports"]),
                    f"{ident(sm)}: endpoint port {ep.get('port')!r} not on the Service",
                )
        for so in by_kind.get("ScaledObject", []):
            ref = so["spec"]["scaleTargetRef"]
            f.check(
                ref.get("name") == d["metadata"]["name"],
                f"{ident(so)}: scaleTargetRef must name the Deployment",
            )
            for trig in so["spec"]["triggers"]:
                auth = trig.get("authenticationRef", {}).get("name")
                f.check(
                    ("TriggerAuthentication", auth) in names,
                    f"{ident(so)}: TriggerAuthentication {auth!r} not rendered",
                )
                md = trig.get("metadata", {})
                if trig["type"] == "postgresql":
                    q = md.get("query", "")
                    f.check("targetQueryValue" in md, f"{ident(so)}: targetQueryValue required")
                    f.check("COALESCE" in q.upper(), f"{ident(so)}: query must COALESCE to 0")
                    for table in (
                        "modkit_outbox_incoming",
                        "modkit_outbox_outgoing",
                        "modkit_outbox_processor",
                        "cleanup_worker_retries",
                    ):
                        f.check(table in q, f"{ident(so)}: backlog query misses {table}")
    return f.finish(f"{len(docs)} objects")


# --------------------------------------------------------------------------------------------
# rules


def rule_spec(prometheusrule: str) -> dict[str, Any]:
    (doc,) = load_docs(prometheusrule)
    if doc.get("kind") != "PrometheusRule":
        raise SystemExit(f"{prometheusrule}: not a PrometheusRule")
    return dict(doc["spec"])


def alerting_rules(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for group in spec["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                yield rule


def cmd_extract_rules(prometheusrule: str, out: str) -> int:
    spec = rule_spec(prometheusrule)
    Path(out).write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return 0


def github_anchor(heading: str) -> str:
    """GitHub's heading slug: lower-case, drop punctuation except '-' and '_', spaces -> '-'."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def cmd_alerts(prometheusrule: str, tests: str, runbooks: str) -> int:
    f = Findings("alerts")
    rules = list(alerting_rules(rule_spec(prometheusrule)))
    anchors = {
        github_anchor(m.group(1))
        for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", Path(runbooks).read_text(), re.MULTILINE)
    }
    names = [r["alert"] for r in rules]
    f.check(len(names) == len(set(names)), "duplicate alert names")
    for r in rules:
        a = r["alert"]
        f.check(
            r.get("labels", {}).get("severity") in ("critical", "warning", "info"),
            f"{a}: severity label must be critical|warning|info",
        )
        ann = r.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            f.check(bool(ann.get(key)), f"{a}: annotation {key} missing")
        url = ann.get("runbook_url", "")
        m = re.fullmatch(r"https://\S+/docs/runbooks\.md#([\w-]+)", url)
        f.check(m is not None, f"{a}: runbook_url must point at docs/runbooks.md#<anchor>")
        if m:
            f.check(
                m.group(1) in anchors,
                f"{a}: runbook anchor #{m.group(1)} has no heading in {runbooks}",
            )
        f.check(
            bool(r.get("for")) or a.endswith("Absent"),
            f"{a}: no `for:` (alerts on a single evaluation flap)",
        )

    with open(tests, encoding="utf-8") as fh:
        t = yaml.safe_load(fh)
    fires: dict[str, int] = {}
    silent: dict[str, int] = {}
    for case in t.get("tests", []):
        for art in case.get("alert_rule_test", []) or []:
            name = art["alertname"]
            f.check(name in names, f"test expects unknown alert {name!r}")
            bucket = fires if art.get("exp_alerts") else silent
            bucket[name] = bucket.get(name, 0) + 1
    for a in names:
        f.check(fires.get(a, 0) > 0, f"{a}: no promtool test case where it fires")
        f.check(silent.get(a, 0) > 0, f"{a}: no promtool test case where it stays silent")
    return f.finish(f"{len(names)} alerts, each with firing and silent test cases and a runbook")


# --------------------------------------------------------------------------------------------
# metric names in rules and the dashboard


GRAFANA_VARS = [
    (re.compile(r"\$__rate_interval|\$\{__rate_interval\}"), "5m"),
    (re.compile(r"\$__interval|\$\{__interval\}"), "1m"),
    (re.compile(r"\$__range|\$\{__range\}"), "1h"),
    (re.compile(r"\$\{?[A-Za-z_]\w*(?::\w+)?\}?"), "x"),
]


def promql_problems(expr: str, allowed: set[str]) -> list[str]:
    import promql_parser  # installed in the tools venv next to PyYAML

    problems: list[str] = []
    try:
        ast = promql_parser.parse(expr)
    except Exception as exc:  # the parser raises plain ValueError-like errors
        return [f"does not parse: {exc}"]

    def visit(node: Any, *_: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name
            for m in node.matchers.matchers if node.matchers else []:
                if m.name == "__name__":
                    name = name or m.value
            if not name:
                problems.append("selector without a metric name")
            elif name not in allowed:
                problems.append(f"unknown metric {name!r}")
            for m in node.matchers.matchers if node.matchers else []:
                vocab = LABEL_VALUES.get(m.name)
                if vocab and m.op == promql_parser.MatchOp.Equal and m.value not in vocab:
                    problems.append(f"{name}: {m.name}={m.value!r} is not a known value")
        return True

    promql_parser.walk(ast, visit)
    return problems


NAMESPACE_MATCHER = re.compile(r'\bnamespace\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def namespace_filter_problems(expr: str) -> list[str]:
    """Outside Kubernetes-style scraping series have no namespace label: a dashboard filter on
    it must also match the empty value, or every panel is empty there."""
    problems = []
    for op, value in NAMESPACE_MATCHER.findall(expr):
        if op != "=~" or not re.fullmatch(value, ""):
            problems.append(
                f"namespace{op}{value!r} drops series without a namespace label "
                '(use namespace=~"${namespace:regex}|")'
            )
    return problems


def dashboard_exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []) or [])

    for p in panels(dashboard.get("panels", [])):
        for t in p.get("targets", []) or []:
            if "expr" in t:
                yield f"panel {p.get('id')} {p.get('title')!r} ref {t.get('refId')}", t["expr"]
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", q or "")
            if m:
                yield f"variable {v['name']}", m.group(1)


def cmd_metrics(prometheusrule: str, dashboard_path: str) -> int:
    f = Findings("metrics")
    allowed = allowed_metric_names()
    n_rules = n_dash = 0
    for r in alerting_rules(rule_spec(prometheusrule)):
        n_rules += 1
        for p in promql_problems(r["expr"], allowed):
            f.add(f"rule {r['alert']}: {p}")
    try:
        dashboard = json.loads(Path(dashboard_path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        f.add(f"{dashboard_path}: invalid JSON: {exc}")
        return f.finish()
    ids: set[int] = set()

    def walk(items: list[dict[str, Any]]) -> None:
        for p in items:
            pid = p.get("id")
            if not isinstance(pid, int) or pid in ids:
                f.add(f"panel id {pid!r} missing or duplicate")
            else:
                ids.add(pid)
            if p.get("type") != "row":
                ds = json.dumps(p.get("datasource"))
                f.check(
                    "${datasource}" in ds,
                    f"panel {pid} {p.get('title')!r}: datasource must be ${{datasource}}",
                )
            walk(p.get("panels", []) or [])

    walk(dashboard.get("panels", []))
    var_names = {v.get("name") for v in dashboard.get("templating", {}).get("list", [])}
    f.check(
        any(
            v.get("type") == "datasource" and v.get("query") == "prometheus"
            for v in dashboard.get("templating", {}).get("list", [])
        ),
        "dashboard needs a prometheus datasource variable named `datasource`",
    )
    for where, expr in dashboard_exprs(dashboard):
        n_dash += 1
        for used in re.findall(r"\$\{?([A-Za-z_]\w*)", expr):
            f.check(
                used.startswith("__") or used in var_names,
                f"{where}: uses undefined variable ${used}",
            )
        concrete = expr
        for pat, repl in GRAFANA_VARS:
            concrete = pat.sub(repl, concrete)
        for p in promql_problems(concrete, allowed):
            f.add(f"{where}: {p}")
        for p in namespace_filter_problems(concrete):
            f.add(f"{where}: {p}")
    f.check(n_dash > 0, "dashboard has no PromQL targets")
    return f.finish(
        f"{n_rules} rule and {n_dash} dashboard expressions parse and use known "
        "metrics and label values"
    )


# --------------------------------------------------------------------------------------------
# Dockerfile properties hadolint does not know about


def cmd_dockerfile(dockerfile: str, dockerignore: str) -> int:
    f = Findings("dockerfile")
    lines: list[str] = []
    buf = ""
    for raw in Path(dockerfile).read_text(encoding="utf-8").splitlines():
        if raw.lstrip().startswith("#"):
            continue
        buf += raw.rstrip("\\").rstrip() + " " if raw.rstrip().endswith("\\") else raw
        if not raw.rstrip().endswith("\\"):
            if buf.strip():
                lines.append(buf.strip())
            buf = ""
    instr = [
        (ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines
    ]
    froms = [i for i, (k, _) in enumerate(instr) if k == "FROM"]
    f.check(len(froms) >= 2, "multi-stage build expected (builder + runtime)")
    f.check(
        bool(instr) and instr[0][0] == "ARG" and instr[0][1].startswith("BASE_IMAGE="),
        "first instruction must be `ARG BASE_IMAGE=...` (base image as a build argument)",
    )
    f.check(
        all("${BASE_IMAGE}" in instr[i][1] or instr[i][1].split()[0] == "builder" for i in froms),
        "every stage must start FROM ${BASE_IMAGE}",
    )
    final = instr[froms[-1] :] if froms else []
    final_kinds = [k for k, _ in final]
    users = [v for k, v in final if k == "USER"]
    f.check(
        bool(users) and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1].strip()) is not None,
        "final stage must end with a numeric non-root USER uid[:gid]",
    )
    ep = [v for k, v in final if k == "ENTRYPOINT"]
    f.check(bool(ep) and ep[-1].strip().startswith("["), "ENTRYPOINT must use exec form")
    for k, v in final:
        if k == "COPY":
            f.check(
                "--from=builder" in v and "/opt/venv" in v,
                f"final stage may copy only the venv from the builder: COPY {v}",
            )
        if k == "RUN":
            f.check(
                not re.search(r"\b(apt-get|pip|uv|gcc|make)\b", v),
                f"no build tools or installs in the final stage: RUN {v}",
            )
    # hadolint's DL3013 misses `/opt/uv/bin/pip install ...`: every pip package must be pinned.
    for k, v in instr:
        if k != "RUN":
            continue
        for cmd in re.split(r"&&|;|\|\|", v):
            words = cmd.split()
            if len(words) >= 2 and words[0].endswith("pip") and words[1] == "install":
                for w in words[2:]:
                    w = w.strip("'\"")
                    f.check(
                        w.startswith("-") or "==" in w,
                        f"unpinned pip install of {w!r} (use name==version)",
                    )
    env = " ".join(v for k, v in final if k == "ENV")
    f.check("PYTHONDONTWRITEBYTECODE=1" in env, "final stage must set PYTHONDONTWRITEBYTECODE=1")
    f.check(
        re.search(r"\bHOME=/tmp\b", env) is not None,
        "final stage must set HOME=/tmp (read-only root)",
    )
    f.check("CMD" in final_kinds, "a default CMD (`run`) is expected")
    ignore = [
        ln.strip()
        for ln in Path(dockerignore).read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    f.check(
        bool(ignore) and ignore[0] == "*", ".dockerignore should be an allow-list starting with `*`"
    )
    for needed in ("pyproject.toml", "uv.lock", "worker", "sql", "lab/pyproject.toml"):
        f.check(f"!{needed}" in ignore, f".dockerignore must re-include {needed}")
    # The lab (throwaway PostgreSQL, fake provider, demo world) is tooling: uv needs its
    # pyproject.toml to read the workspace, the production image must carry none of its code.
    included = [ln.lstrip("!").rstrip("/") for ln in ignore if ln.startswith("!")]
    f.check(
        not any(path in ("lab", "lab/cwlab") for path in included),
        ".dockerignore must not re-include the lab's code (lab/cwlab)",
    )
    f.check(
        not any(re.search(r"\blab/cwlab\b|\bcwlab\b", v) for k, v in instr if k == "COPY"),
        "the image must not COPY the lab (cwlab)",
    )
    return f.finish(
        f"{len(froms)} stages, final stage: USER {users[-1] if users else '?'}, "
        "exec-form ENTRYPOINT"
    )


def main(argv: list[str]) -> int:
    commands: dict[str, tuple[Callable[..., int], int]] = {
        "split": (cmd_split, 2),
        "policy": (cmd_policy, 3),
        "extract-rules": (cmd_extract_rules, 2),
        "alerts": (cmd_alerts, 3),
        "metrics": (cmd_metrics, 2),
        "dockerfile": (cmd_dockerfile, 2),
    }
    if not argv or argv[0] not in commands or len(argv) - 1 != commands[argv[0]][1]:
        print(__doc__, file=sys.stderr)
        return 2
    fn, _ = commands[argv[0]]
    return fn(*argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
