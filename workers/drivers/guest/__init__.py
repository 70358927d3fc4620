"""Driver for target machines: SSH with pinned host keys, Docker over that SSH.

No Django here: callers pass endpoints, keys and specs in, and get typed
results or typed errors (``workers.drivers.guest.errors``) back.
"""

from .containers import (
    ContainerInfo,
    ContainerStats,
    HealthCheck,
    ServiceSpec,
    container_logs,
    container_stats,
    list_containers,
    remove_container,
    start_container,
    stop_container,
    wait_healthy,
)
from .engine import engine_client
from .errors import (
    CommandFailed,
    CommandTimeout,
    HealthCheckFailed,
    HostKeyMismatch,
    ImageShipFailed,
    InvalidSpec,
    RemoteError,
    RolloutFailed,
    SSHAuthFailed,
    SSHUnreachable,
)
from .guest_proxy import GuestProxy, ProxyNotRunning, ProxyStartFailed
from .identity import GuestIdentity, reidentify
from .images import (
    PushResult,
    RegistryAuth,
    chain_ids,
    pull_by_digest,
    pull_image,
    push_image,
)
from .placement import spread_replicas
from .rollout import RolloutReport, StepRecord, roll_out
from .ssh import (
    CommandResult,
    ConnectionPool,
    Endpoint,
    SSHConnection,
    load_private_key,
    wait_for_ssh,
)

__all__ = [
    "CommandFailed",
    "CommandResult",
    "CommandTimeout",
    "ConnectionPool",
    "ContainerInfo",
    "ContainerStats",
    "Endpoint",
    "GuestProxy",
    "HealthCheck",
    "HealthCheckFailed",
    "GuestIdentity",
    "HostKeyMismatch",
    "ImageShipFailed",
    "InvalidSpec",
    "ProxyNotRunning",
    "ProxyStartFailed",
    "PushResult",
    "RegistryAuth",
    "RemoteError",
    "RolloutFailed",
    "RolloutReport",
    "SSHAuthFailed",
    "SSHConnection",
    "SSHUnreachable",
    "ServiceSpec",
    "StepRecord",
    "chain_ids",
    "container_logs",
    "container_stats",
    "engine_client",
    "list_containers",
    "load_private_key",
    "pull_by_digest",
    "pull_image",
    "push_image",
    "reidentify",
    "remove_container",
    "roll_out",
    "spread_replicas",
    "start_container",
    "stop_container",
    "wait_for_ssh",
    "wait_healthy",
]
