#!/usr/bin/env bash
# What the fault-injection suite (tests/faults.rs) needs besides the shared services: the server
# programs it starts privately (PostgreSQL's initdb and pg_ctl, rabbitmq-server, redis-server),
# and libfaketime for the process whose clock runs ahead. Installs what is missing (Debian);
# idempotent and quick when everything is there.
set -euo pipefail

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ] || missing+=(faketime)
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing for the fault suite: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "fault suite: postgres $(ls -d /usr/lib/postgresql/*/ | xargs -n1 basename | tail -n1)," \
  "rabbitmq-server, redis-server, libfaketime"
