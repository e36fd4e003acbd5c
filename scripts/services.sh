#!/usr/bin/env bash
# Start RabbitMQ, Redis and PostgreSQL where they are installed on this machine but not listening.
# Each is probed on its port; only a closed port leads to a start. Needs root for the start commands.
set -u

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {  # name port seconds
  local deadline=$((SECONDS + $3))
  until port_open "$2"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "services: $1 did not open port $2 within $3 s" >&2
      return 1
    fi
    sleep 0.5
  done
  echo "services: $1 is up on 127.0.0.1:$2"
}

ensure() {  # name port start-command...
  local name=$1 port=$2
  shift 2
  if port_open "$port"; then
    echo "services: $name already up on 127.0.0.1:$port"
    return 0
  fi
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "services: $name is down and '$1' is not installed; start $name on 127.0.0.1:$port" >&2
    return 1
  fi
  echo "services: starting $name: $*"
  "$@" || true
  wait_port "$name" "$port" 60
}

status=0
ensure PostgreSQL 5432 bash -c 'pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start' || status=1
ensure Redis 6379 redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log || status=1
ensure RabbitMQ 5672 rabbitmq-server -detached || status=1
# The management plugin gives Flower's Broker page its queue depths (the dead-letter queue's too);
# enabling it on a running node is idempotent and takes effect at once.
if command -v rabbitmq-plugins >/dev/null 2>&1 && port_open 5672 && ! port_open 15672; then
  rabbitmq-plugins --quiet enable rabbitmq_management >/dev/null || status=1
  wait_port "RabbitMQ management" 15672 60 || status=1
fi
exit $status
