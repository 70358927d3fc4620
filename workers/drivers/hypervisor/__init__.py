"""Hypervisor driver: libvirt domains, storage volumes, snapshots, environment
networks, cloud-init seeds.

No Django here. The job layer builds a ``Hypervisor`` and calls the step
methods of its parts (``hv.storage.ensure_pools``, ``hv.storage.create_disk``,
``hv.guests.define``, ``hv.guests.start``, ``hv.snapshots.create``, ...), each
safe to re-run, and retries errors whose ``transient`` attribute is true.
"""

from .config import STRATA_NAMESPACE, DomainConfig, NetworkConfig, StrataMetadata
from .driver import Hypervisor
from .errors import (
    ConnectionLost,
    HostUnreachable,
    HypervisorError,
    InvalidSpec,
    InvalidState,
    NotFound,
    OperationTimeout,
)
from .guest import DomainState, DomainStats, Guests, StrataDomain
from .host import Host, HostCapacity
from .network import NetworkDriver, StrataNetwork
from .ports import find_free_loopback_ports
from .seed import SeedConfig, SshKeyPair, build_seed_iso, generate_ed25519_keypair
from .snapshots import Snapshot, Snapshots
from .spec import (
    DhcpHost,
    DnsHost,
    DomainSpec,
    ForwardSpec,
    KernelBoot,
    LibvirtNetwork,
    NetworkSpec,
    UserNetwork,
)
from .storage import Storage, StrataVolume, VolumeKind
from .templates import StateFileInvalid, Templates

__all__ = [
    "STRATA_NAMESPACE",
    "ConnectionLost",
    "DhcpHost",
    "DnsHost",
    "DomainConfig",
    "DomainSpec",
    "DomainState",
    "DomainStats",
    "ForwardSpec",
    "Guests",
    "Host",
    "HostCapacity",
    "HostUnreachable",
    "Hypervisor",
    "HypervisorError",
    "InvalidSpec",
    "InvalidState",
    "KernelBoot",
    "LibvirtNetwork",
    "NetworkConfig",
    "NetworkDriver",
    "NetworkSpec",
    "NotFound",
    "OperationTimeout",
    "SeedConfig",
    "Snapshot",
    "Snapshots",
    "SshKeyPair",
    "Storage",
    "StrataDomain",
    "StrataMetadata",
    "StrataNetwork",
    "StateFileInvalid",
    "StrataVolume",
    "Templates",
    "UserNetwork",
    "VolumeKind",
    "build_seed_iso",
    "find_free_loopback_ports",
    "generate_ed25519_keypair",
]
