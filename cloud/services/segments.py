"""An environment's segment in the database: its subnet from the operator's pool
and each VM's address and MAC on it.

Called inside ``create_environment``'s transaction, so a refusal leaves
nothing: no environment without its subnet, no VM without its address.
Allocations of all teams are serialised by the host row locks every
placement takes (``Host`` rows, FOR UPDATE, in pk order), and the unique
subnet column backs that up.
"""

import ipaddress
import uuid

from django.conf import settings

from cloud.models import Environment, Host, VirtualMachine, VMState

from .errors import Conflict, ValidationError
from .subnets import PoolExhausted, PoolMisconfigured, allocate_subnet

POOL_SETTING, PREFIX_SETTING = "STRATA_SUBNET_POOL", "STRATA_SUBNET_PREFIX"
EGRESS_FIELD = "egress"
# Tries at a fresh VM UUID when its derived MAC collides with another VM of the
# environment (24 bits of a hash: rare, and a new UUID changes the MAC).
MAC_ATTEMPTS = 8


def segments_enabled() -> bool:
    return bool(settings.STRATA_SUBNET_POOL)


def validate_egress(egress) -> str:
    """The egress setting: 'isolated' (also when not given), 'nat' or 'route'; else a
    400 naming ``egress``."""
    if egress is None:
        return Environment.Egress.ISOLATED
    if egress not in Environment.Egress.values:
        allowed = ", ".join(repr(value) for value in Environment.Egress.values)
        raise ValidationError({EGRESS_FIELD: [f"must be one of {allowed}, got {egress!r}"]})
    return egress


def _prefix_length() -> int:
    value = settings.STRATA_SUBNET_PREFIX
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValidationError(
            {PREFIX_SETTING: [f"must be a whole number such as 24, got {value!r}"]}
        ) from None


def allocate_environment_subnet(env: Environment) -> None:
    """Give ``env`` the lowest free subnet of the pool (no-op when segments are off).

    A pool the operator set wrong is a 400 naming the setting (and the pool
    entry at fault); a pool with nothing free is a 409 naming the setting.
    """
    if not segments_enabled():
        return
    prefix_length = _prefix_length()
    list(Host.objects.select_for_update().order_by("pk"))
    taken = Environment.objects.exclude(subnet=None).values_list("subnet", flat=True)
    try:
        subnet = allocate_subnet(settings.STRATA_SUBNET_POOL, prefix_length, taken)
    except PoolMisconfigured as error:
        field = PREFIX_SETTING if error.field == "prefix_length" else POOL_SETTING
        raise ValidationError({field: [f"{error.field}: {error.message}"]}) from None
    except PoolExhausted as error:
        raise Conflict(POOL_SETTING, error.message) from None
    env.subnet, env.network_uuid = str(subnet), uuid.uuid4()
    env.save(update_fields=["subnet", "network_uuid"])


def static_addresses(subnet: str) -> list[str]:
    """Addresses for VMs: the lower half of the hosts after the gateway (the
    upper half is the dynamic DHCP range, see ``default_dhcp_range``)."""
    hosts = list(ipaddress.IPv4Network(subnet).hosts())
    return [str(address) for address in hosts[1 : len(hosts) // 2]]


def address_vms(env: Environment, vms: list[VirtualMachine]) -> None:
    """Give each new VM of ``env`` a free static address and a MAC derived from its
    UUID; a 409 naming ``vm_count`` when the subnet has no address left."""
    if env.subnet is None:
        return
    siblings = VirtualMachine.objects.filter(environment=env).exclude(state=VMState.DELETED)
    used_ips = set(siblings.exclude(segment_ip=None).values_list("segment_ip", flat=True))
    used_macs = set(siblings.exclude(mac_address="").values_list("mac_address", flat=True))
    free = [address for address in static_addresses(env.subnet) if address not in used_ips]
    if len(free) < len(vms):
        raise Conflict(
            "vm_count",
            f"subnet {env.subnet} has {len(free)} VM addresses left, {len(vms)} requested",
        )
    for vm, address in zip(vms, free, strict=False):
        for _attempt in range(MAC_ATTEMPTS):
            if vm.derived_mac_address not in used_macs:
                break
            vm.uuid = uuid.uuid4()
        vm.segment_ip, vm.mac_address = address, vm.derived_mac_address
        used_macs.add(vm.mac_address)
