#!/usr/bin/env bash
# Start the daemons Strata needs, each only if it is not already answering.
# No systemd on our test machines: where systemd is PID 1 we use it, otherwise
# we start the daemons directly.
# Usage: scripts/services.sh [redis] [libvirt] [docker] [postgres] [sshd] [kvm] [registry]
set -euo pipefail
want=("$@")
[ ${#want[@]} -gt 0 ] || want=(redis libvirt docker)
log_dir=${STRATA_LOG_DIR:-/var/log/strata}
mkdir -p "$log_dir"
has_systemd() { [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; }
has_udev() { pgrep -x systemd-udevd >/dev/null || pgrep -x udevd >/dev/null; }
kvm_device=${STRATA_KVM_DEVICE:-/dev/kvm}
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${STRATA_PYTHON:-$repo/.venv/bin/python}

wait_for() {  # wait_for DESCRIPTION COMMAND...
  local what=$1; shift
  for _ in $(seq 1 60); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "services: $what did not come up (log in $log_dir)" >&2; return 1
}

start_redis() {
  redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && return 0
  if has_systemd; then systemctl start redis-server
  else
    mkdir -p /var/lib/redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --dir /var/lib/redis \
      --logfile "$log_dir/redis.log"
  fi
  wait_for redis redis-cli -h 127.0.0.1 ping
}

start_kvm() {
  # Without udev the node stays root:root 0600: libvirt's QEMU user cannot open
  # it, so libvirt finds its cached QEMU capabilities stale at every lookup and
  # probes QEMU again (minutes per define under load).  Set what udev's rule does.
  # A libvirtd already running probes once more at its next lookup, then keeps
  # the result: no restart needed.
  [ -c "$kvm_device" ] || return 0
  has_udev && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "services: not root; $kvm_device left as it is" >&2; return 0
  fi
  if ! getent group kvm >/dev/null; then
    echo "services: no kvm group; $kvm_device left as it is" >&2; return 0
  fi
  chgrp kvm "$kvm_device"
  chmod 0660 "$kvm_device"
}

start_libvirt() {
  # Before libvirtd starts, so its first capability probe sees the final mode.
  start_kvm
  if has_systemd; then systemctl start virtlogd libvirtd
  else
    pgrep -x virtlogd >/dev/null || virtlogd -d
    pgrep -x libvirtd >/dev/null || libvirtd -d
  fi
  wait_for libvirtd virsh -c qemu:///system version
}

start_docker() {
  docker version >/dev/null 2>&1 && return 0
  if has_systemd; then systemctl start docker
  else (setsid dockerd >"$log_dir/dockerd.log" 2>&1 &); fi
  wait_for dockerd docker version
}

start_postgres() {
  pg_isready -q -h 127.0.0.1 && return 0
  if has_systemd; then systemctl start postgresql
  else
    local cluster; cluster=$(pg_lsclusters -h | awk 'NR==1 {print $1" "$2}')
    [ -n "$cluster" ] || { echo "services: no PostgreSQL cluster found" >&2; return 1; }
    pg_ctlcluster $cluster start
  fi
  wait_for postgres pg_isready -h 127.0.0.1
}

start_sshd() {
  # Only needed for the host key material; tests run their own sshd on a loopback port.
  ssh-keygen -A >/dev/null
}

start_registry() {
  # Strata's own registry, configured from its settings (token auth by Strata,
  # loopback address).  The Debian package's unit would serve the packaged
  # htpasswd configuration on all addresses, on the same port: keep it off.
  local manage=("$python" "$repo/manage.py" registry_config)
  if has_systemd; then systemctl disable --now docker-registry.service >/dev/null 2>&1 || true; fi
  "${manage[@]}" --check >/dev/null 2>&1 && return 0
  local config; config=$("${manage[@]}")
  (setsid docker-registry serve "$config" >>"$log_dir/registry.log" 2>&1 &)
  wait_for registry "${manage[@]}" --check
}

for s in "${want[@]}"; do "start_$s"; done
