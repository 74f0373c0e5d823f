#!/usr/bin/env bash
# Makes sure the local services OrderFlow needs are running: PostgreSQL, RabbitMQ and Redis.
# Starts any that is down (as this machine kind's images start them) and waits until it answers.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local name=$1 port=$2
  for _ in $(seq 1 120); do
    port_open "$port" && return 0
    sleep 0.5
  done
  echo "error: $name did not come up on port $port" >&2
  exit 1
}

if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  for _ in $(seq 1 120); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
  pg_isready -h 127.0.0.1 -p 5432
fi

if ! port_open 5672; then
  echo "starting RabbitMQ"
  rabbitmq-server -detached
  wait_port RabbitMQ 5672
  rabbitmqctl await_startup >/dev/null 2>&1 || true
fi

if ! port_open 6379; then
  echo "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port Redis 6379
fi
echo "services: PostgreSQL, RabbitMQ and Redis are up"
