#!/usr/bin/env bash
# Start Strata on this machine: services, database, first admin and team, this
# host registered, then a Celery worker, Celery beat, the host's console relay
# and the web server.
# Ctrl-C stops what this script started (the system daemons keep running).
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
bind=${STRATA_BIND:-127.0.0.1:8000}
# The trial serves plain HTTP on loopback; behind a TLS proxy leave this unset.
export STRATA_HTTPS=${STRATA_HTTPS:-false}

scripts/services.sh redis libvirt docker
$py manage.py migrate --noinput
scripts/services.sh registry
$py manage.py collectstatic --noinput -v 0
queue=$($py manage.py bootstrap --print-queue)
# The default guest image: built once with debootstrap (about 80 s), then cached.
$py manage.py build_image debian-12

pids=()
stop() {
  trap - INT TERM EXIT
  echo "stopping Strata..."
  [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

.venv/bin/celery -A workers worker -Q "strata,$queue" --concurrency 2 -n "worker@%h" \
  --loglevel INFO &
pids+=($!)
.venv/bin/celery -A workers beat --loglevel INFO &
pids+=($!)
# The console relay of this host: a long-lived process, not a Celery task, so an
# open console never holds one of the worker's job slots.
$py manage.py console_relay "${queue#host.}" &
pids+=($!)
# An ASGI server: the portal's pages and the console's websocket on one port.
.venv/bin/uvicorn cloud.asgi:application --host "${bind%:*}" --port "${bind##*:}" --workers 2 \
  --ws websockets-sansio --ws-max-size 1048576 --lifespan off &
pids+=($!)

echo "Strata is up: http://$bind/  (admin at http://$bind/admin/; Ctrl-C stops)"
# If any of them dies, stop the rest rather than run half a system.
wait -n "${pids[@]}"
