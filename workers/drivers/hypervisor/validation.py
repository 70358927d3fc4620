"""The checks every value passes before it reaches XML, a QEMU argument or a
file path; a refused value raises InvalidSpec naming the field, so an API
caller gets a clear 4xx and nothing is changed."""

from __future__ import annotations

import ipaddress
import os
import re
import uuid

from .errors import InvalidSpec

# A DNS label: usable as libvirt domain name, guest hostname and file-name stem.
DOMAIN_NAME_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# Strata ids (database keys, UUIDs) carried in the domain's metadata.
STRATA_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
LIBVIRT_OBJECT_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAC_PATTERN = re.compile(r"52:54:00(?::[0-9a-f]{2}){3}")
MAX_DNS_NAME_LENGTH = 253
# A /29 still leaves the gateway, a static host and a small dynamic range.
MIN_PREFIX_LENGTH, MAX_PREFIX_LENGTH = 8, 29


def require_int(field_name: str, value: object, minimum: int, maximum: int) -> int:
    # bool is an int subclass; True must not pass as "1 vCPU".
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpec(field_name, f"must be an integer, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise InvalidSpec(field_name, f"must be between {minimum} and {maximum}, got {value}")
    return value


def require_port(field_name: str, value: object) -> int:
    return require_int(field_name, value, 1, 65535)


def require_match(field_name: str, value: object, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidSpec(field_name, f"must be {what}, got {value!r}")
    return value


def require_domain_name(field_name: str, value: object) -> str:
    return require_match(
        field_name,
        value,
        DOMAIN_NAME_PATTERN,
        "1-63 lower-case letters, digits or inner hyphens",
    )


def require_mac(field_name: str, value: object) -> str:
    return require_match(field_name, value, MAC_PATTERN, "a 52:54:00:xx:xx:xx MAC")


def require_uuid(field_name: str, value: object) -> str:
    """The canonical lower-case form of a UUID given as str or uuid.UUID."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        try:
            parsed = uuid.UUID(value)
        except ValueError:
            pass
        else:
            if str(parsed) == value.lower():
                return str(parsed)
    raise InvalidSpec(field_name, f"must be a UUID, got {value!r}")


def require_absolute_path(field_name: str, value: object) -> str:
    """An absolute, already-normalised path without control characters."""
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or os.path.normpath(value) != value
        or any(ord(char) < 0x20 or ord(char) == 0x7F for char in value)
        or len(value) > 4096
    ):
        raise InvalidSpec(field_name, f"must be a normalised absolute path, got {value!r}")
    return value


def require_dns_name(field_name: str, value: object) -> str:
    """One DNS label or dotted labels (lower case), at most 253 characters."""
    if (
        not isinstance(value, str)
        or len(value) > MAX_DNS_NAME_LENGTH
        or not all(DOMAIN_NAME_PATTERN.fullmatch(label) for label in value.split("."))
    ):
        raise InvalidSpec(
            field_name, f"must be lower-case DNS labels joined by dots, got {value!r}"
        )
    return value


def require_ipv4(field_name: str, value: object) -> ipaddress.IPv4Address:
    if not isinstance(value, str):
        raise InvalidSpec(field_name, f"must be an IPv4 address, got {value!r}")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise InvalidSpec(field_name, f"must be an IPv4 address, got {value!r}") from None
    # Only the canonical dotted form: the text goes into XML and is compared later.
    if not isinstance(address, ipaddress.IPv4Address) or str(address) != value:
        raise InvalidSpec(field_name, f"must be an IPv4 address in dotted form, got {value!r}")
    return address


def require_subnet(field_name: str, value: object) -> ipaddress.IPv4Network:
    try:
        subnet = ipaddress.IPv4Network(value) if isinstance(value, str) else None
    except ValueError as error:
        raise InvalidSpec(
            field_name, f"must be an IPv4 network such as 10.77.1.0/24: {error}"
        ) from None
    if subnet is None or str(subnet) != value:
        raise InvalidSpec(
            field_name, f"must be an IPv4 network such as 10.77.1.0/24, got {value!r}"
        )
    require_int(f"{field_name} prefix", subnet.prefixlen, MIN_PREFIX_LENGTH, MAX_PREFIX_LENGTH)
    if not subnet.is_private or subnet.is_loopback or subnet.is_link_local:
        raise InvalidSpec(field_name, f"must be a private range (RFC 1918), got {value!r}")
    return subnet


def require_host_in(
    field_name: str, value: object, subnet: ipaddress.IPv4Network
) -> ipaddress.IPv4Address:
    address = require_ipv4(field_name, value)
    if address not in subnet or address in (subnet.network_address, subnet.broadcast_address):
        raise InvalidSpec(field_name, f"must be a host address of {subnet}, got {value!r}")
    return address
