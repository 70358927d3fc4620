"""Hypervisor driver: libvirt domains, storage volumes, cloud-init seeds.

No Django here. The job layer calls a ``Hypervisor``'s step methods
(ensure_storage, import_base_image, create_disk, write_seed, define, start,
shutdown, destroy, ...), each safe to re-run, and retries errors whose
``transient`` attribute is true.
"""

from .domain_xml import STRATA_NAMESPACE, StrataMetadata, build_domain_xml
from .driver import (
    DomainState,
    DomainStats,
    HostCapacity,
    Hypervisor,
    Snapshot,
    StrataDomain,
    StrataVolume,
    VolumeKind,
)
from .errors import (
    ConnectionLost,
    HostUnreachable,
    HypervisorError,
    InvalidSpec,
    InvalidState,
    NotFound,
    OperationTimeout,
)
from .ports import find_free_loopback_ports
from .seed import SeedConfig, SshKeyPair, build_seed_iso, generate_ed25519_keypair
from .spec import DomainSpec, ForwardSpec, KernelBoot, LibvirtNetwork, UserNetwork

__all__ = [
    "STRATA_NAMESPACE",
    "ConnectionLost",
    "DomainSpec",
    "DomainState",
    "DomainStats",
    "ForwardSpec",
    "HostCapacity",
    "HostUnreachable",
    "Hypervisor",
    "HypervisorError",
    "InvalidSpec",
    "InvalidState",
    "KernelBoot",
    "LibvirtNetwork",
    "NotFound",
    "OperationTimeout",
    "SeedConfig",
    "Snapshot",
    "SshKeyPair",
    "StrataDomain",
    "StrataMetadata",
    "StrataVolume",
    "UserNetwork",
    "VolumeKind",
    "build_domain_xml",
    "build_seed_iso",
    "find_free_loopback_ports",
    "generate_ed25519_keypair",
]
