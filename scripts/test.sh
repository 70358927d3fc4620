#!/usr/bin/env bash
# Set up what the suite needs (services, a PostgreSQL role) and run it all.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh redis libvirt docker postgres

# A role that may create the test database; password auth over loopback TCP.
pg_user=${STRATA_TEST_PG_USER:-strata}
pg_password=${STRATA_TEST_PG_PASSWORD:-strata-test}
if ! su postgres -c "psql -tAc \"SELECT 1 FROM pg_roles WHERE rolname='$pg_user'\"" | grep -q 1; then
  su postgres -c "psql -q -c \"CREATE ROLE $pg_user LOGIN CREATEDB PASSWORD '$pg_password'\""
fi
export DATABASE_URL=${DATABASE_URL:-postgres://$pg_user:$pg_password@127.0.0.1:5432/strata}
# VMs in tests run under TCG unless told otherwise: KVM is not usable on every CI machine.
export STRATA_VIRT_TYPE=${STRATA_VIRT_TYPE:-qemu}
# The suite's own Redis database: a `make run` on this machine uses database 0,
# and its workers must never take the suite's jobs (or the suite theirs).
export CELERY_BROKER_URL=${CELERY_BROKER_URL:-redis://127.0.0.1:6379/15}
# Live-server tests speak plain HTTP on loopback.
export STRATA_HTTPS=false

.venv/bin/ruff check .
.venv/bin/lint-imports
exec .venv/bin/pytest "$@"
