#!/usr/bin/env bash
# Run the benchmarks; each prints a table comparing Strata with the tool a user
# would use instead.  `make bench` (or `scripts/bench.sh scheduling` for one).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh redis libvirt docker postgres
pg_user=${STRATA_TEST_PG_USER:-strata}
pg_password=${STRATA_TEST_PG_PASSWORD:-strata-test}
if ! su postgres -c "psql -tAc \"SELECT 1 FROM pg_roles WHERE rolname='$pg_user'\"" | grep -q 1; then
  su postgres -c "psql -q -c \"CREATE ROLE $pg_user LOGIN CREATEDB PASSWORD '$pg_password'\""
fi
export BENCH_ADMIN_URL=postgres://$pg_user:$pg_password@127.0.0.1:5432/postgres
export STRATA_VIRT_TYPE=${STRATA_VIRT_TYPE:-qemu} STRATA_HTTPS=false
benches=("$@")
[ ${#benches[@]} -gt 0 ] || benches=(scheduling portal deploy network vm_create registry_push)
for b in "${benches[@]}"; do
  echo "== bench/$b.py"
  .venv/bin/python "bench/$b.py"
done
