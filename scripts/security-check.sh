#!/usr/bin/env bash
# The static half of the security checks (the running half is tests/security.rs and
# tests/schemathesis.rs):
#  - no secret in the repository: detect-secrets over every tracked file; each finding must be in
#    .secrets.baseline, audited as not a secret (local defaults such as guest:guest, test
#    passwords). A new finding fails until it is removed or audited:
#      target/security-venv/bin/detect-secrets scan --baseline .secrets.baseline \
#        --exclude-files '^deploy/schemas/|^Cargo\.lock$|\.svg$|\.min\.js$'
#      target/security-venv/bin/detect-secrets audit .secrets.baseline   # mark each: not a secret
#  - cargo deny check licenses bans sources (deny.toml), offline.
#  - cargo deny check advisories, offline, against the RustSec snapshot beside the repository
#    (scripts/advisories.sh prints its date); an advisory not ignored in deny.toml fails.
set -euo pipefail
export PYTHONDONTWRITEBYTECODE=1
cd "$(dirname "$0")/.."
scripts/security-tools.sh
bin=target/security-venv/bin

# Scan against a copy, so the check never rewrites the tracked baseline.
copy=target/secrets.baseline.check
cp .secrets.baseline "$copy"
"$bin/detect-secrets" scan --baseline "$copy" \
  --exclude-files '^deploy/schemas/|^Cargo\.lock$|\.svg$|\.min\.js$|^target/|^\.secrets\.baseline$'
# `scan --baseline` keeps the audit label of findings it already knew; a new one has none.
python3 - "$copy" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))["results"]
new = [(f, r["line_number"], r["type"]) for f, rs in results.items() for r in rs
       if r.get("is_secret") is not False]
for f, line, kind in new:
    print(f"security-check: possible secret not audited in .secrets.baseline: {f}:{line} ({kind})",
          file=sys.stderr)
sys.exit(1 if new else 0)
PY
echo "security-check: no unaudited secret in the tracked files"

# cargo-deny reads the metadata of every platform's dependencies (wasm-bindgen, Android, ...),
# which a build on this machine never downloads: fetch them all from crates.io first.
cargo fetch --locked --quiet
"$bin/cargo-deny" --offline check licenses bans sources
scripts/advisories.sh
