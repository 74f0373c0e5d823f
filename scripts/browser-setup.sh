#!/usr/bin/env bash
# Installs what the admin UI's browser tests need, if it is missing: Debian's Chromium (the tests
# drive the real browser headless) and playwright-core from npm, which drives it over CDP and never
# downloads a browser of its own. Safe to run again: it only installs what is not there.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
  echo "browser-setup: installing Debian's chromium"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

if ! command -v node >/dev/null 2>&1; then
  echo "browser-setup: installing node and npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

dir=engine/tests/browser
if [ ! -d "$dir/node_modules/playwright-core" ]; then
  echo "browser-setup: installing playwright-core (no browser download)"
  # playwright-core never downloads a browser; the variable makes sure nothing else does either.
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
fi

echo "browser-setup: $(chromium --version 2>/dev/null | head -1), playwright-core $(node -p "require('./$dir/node_modules/playwright-core/package.json').version")"
