#!/usr/bin/env bash
# Installs the local test servers that the tests start themselves, if they are missing:
# - aiosmtpd (PyPI): the SMTP server the notification tests deliver email to.
# Idempotent and quick when everything is already there.
set -euo pipefail

PYTHON=${ORDERFLOW_TEST_PYTHON:-python3}

if ! "$PYTHON" -c 'import aiosmtpd' >/dev/null 2>&1; then
  echo "installing aiosmtpd (the notification tests' SMTP server)"
  "$PYTHON" -m pip install --quiet --disable-pip-version-check 'aiosmtpd>=1.4,<2'
fi
"$PYTHON" -c 'import aiosmtpd; print("test servers: aiosmtpd", aiosmtpd.__version__)'
