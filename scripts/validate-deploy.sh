#!/usr/bin/env bash
# Validates deploy/ offline: renders the Kustomize overlays, checks every object against the
# Kubernetes schemas (and the CRDs' against deploy/schemas/), lints the YAML, and checks the Kong
# config, the Prometheus rules, the Grafana dashboard and the Dockerfile against the code they
# deploy. Exits non-zero on any problem. See deploy/tools/validate.py for the list of checks.
#
# Its Python tools live in a venv under target/ (made on first use, reused after).
set -euo pipefail
# No __pycache__ in the source tree.
export PYTHONDONTWRITEBYTECODE=1
cd "$(dirname "$0")/.."

venv=target/deploy-venv
# Pinned: a new schema bundle or parser version is a change to review, not a surprise in CI.
requirements=(kubernetes-validate==1.37.0 yamllint==1.38.0 promql-parser==0.11.0)
stamp="$venv/.requirements"
if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "${requirements[*]}" ]]; then
  echo "validate-deploy: installing ${requirements[*]} into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${requirements[@]}"
  echo "${requirements[*]}" > "$stamp"
fi
exec "$venv/bin/python" deploy/tools/validate.py
