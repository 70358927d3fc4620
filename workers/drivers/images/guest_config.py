"""Files written into the Debian guest's root tree after debootstrap.

Their content is part of the build recipe: changing any of them changes the
recipe hash and so yields a new cached image.
"""

# The VM's rootfs is the whole virtio disk, without a partition table.
FSTAB = "/dev/vda / ext4 defaults,errors=remount-ro 0 1\n"

# The NIC is enp0s16 on our q35 layout; match every en* so other layouts work too.
NETWORKD_WIRED = """\
[Match]
Name=en*

[Network]
DHCP=yes
"""

CLOUD_INIT_STRATA = """\
# Strata seeds every VM with a NoCloud ISO (label cidata); look nowhere else.
datasource_list: [ NoCloud ]
# The locale module fails on this minimal image (no locales package).
locale: false
# systemd-networkd is configured by the image (DHCP on en*); one source of truth.
network:
  config: disabled
"""

# Without a NoCloud seed, skip cloud-init altogether instead of running it with
# the fallback datasource (a minute of boot under TCG for nothing).
DS_IDENTIFY = "policy: search,found=all,maybe=all,notfound=disabled\n"

# cloud-init replaces the host keys with the ones Strata puts in user-data.  An
# image booted without a seed still needs keys for sshd to start: generate them
# then, after cloud-init had its chance.
SSH_HOST_KEYS_UNIT = """\
[Unit]
Description=Generate SSH host keys when none were provided
After=cloud-init.service
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
"""

HOSTS = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"

GUEST_FILES: dict[str, str] = {
    "etc/fstab": FSTAB,
    "etc/hostname": "debian\n",
    "etc/hosts": HOSTS,
    "etc/systemd/network/20-wired.network": NETWORKD_WIRED,
    "etc/cloud/cloud.cfg.d/90-strata.cfg": CLOUD_INIT_STRATA,
    "etc/cloud/ds-identify.cfg": DS_IDENTIFY,
    "etc/systemd/system/strata-ssh-host-keys.service": SSH_HOST_KEYS_UNIT,
    # An empty unit file masks the package's HAProxy: the one Strata starts
    # (guest_proxy) is the only one, with its own configuration and sockets.
    "etc/systemd/system/haproxy.service": "",
}

ENABLED_UNITS = (
    "systemd-networkd.service",
    "systemd-resolved.service",
    "docker.service",
    "strata-ssh-host-keys.service",
)
