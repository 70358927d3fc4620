#!/usr/bin/env bash
# Install the Debian packages Strata needs, only those missing.  Idempotent.
set -euo pipefail
packages=(
  # virtualisation
  libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils
  # building libvirt-python
  libvirt-dev pkg-config gcc python3-dev
  # guest images and containers
  debootstrap e2fsprogs docker.io busybox-static
  # the team image registry (CNCF distribution)
  docker-registry
  # services
  redis-server postgresql openssh-server openssh-client
  # tools used by scripts and the benchmarks
  iproute2 procps util-linux curl virtinst
  # the tests check rendered XML against libvirt's schemas (virt-xml-validate uses xmllint)
  libxml2-utils
  # environment networks (libvirt network dnsmasq) and the service proxy
  dnsmasq-base haproxy
)
[ "${STRATA_WITH_BROWSER:-0}" = 1 ] && packages+=(chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "install-system: missing packages (${missing[*]}); run as root or install them" >&2
  exit 1
fi
echo "install-system: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# policy-rc.d keeps the packages' maintainer scripts from starting daemons we start ourselves.
apt-get install -y -q --no-install-recommends "${missing[@]}"
