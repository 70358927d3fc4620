"""An environment's network drawn as a picture: its segment, the VMs on it with
their addresses, the replicas each VM runs, and the host ports published into
them.

The layout is computed here, in plain numbers, and the template only draws
it (portal/partials/segment_map.html), so a test can check where things are
without a browser and the page needs no script.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from cloud.models import Container, Environment, PortForward, VirtualMachine, VMState
from workers.drivers.hypervisor.spec import SSH_GUEST_PORT

VMS_PER_ROW = 4
MAP_WIDTH = 760
MARGIN = 16
HOST_STRIP_HEAD = 26
SEGMENT_HEAD = 34
VM_GAP = 14
VM_HEAD = 56
CHIP_HEIGHT = 20
CHIP_GAP = 4
VM_MIN_BODY = CHIP_HEIGHT + 2 * CHIP_GAP
PORT_WIDTH = 226
PORT_HEIGHT = 22
PORT_GAP = 8
# The most replica chips one VM box lists; the rest are counted in a last chip.
CHIPS_PER_VM = 8


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    width: float
    height: float

    @property
    def centre_x(self) -> float:
        return self.x + self.width / 2

    @property
    def bottom(self) -> float:
        return self.y + self.height


@dataclass(frozen=True)
class ReplicaChip:
    box: Box
    label: str
    health: str  # a ContainerHealth value, or "more" for the overflow chip


@dataclass(frozen=True)
class VMNode:
    box: Box
    name: str
    address: str
    state: str
    chips: tuple[ReplicaChip, ...]


@dataclass(frozen=True)
class PublishedPort:
    box: Box
    label: str
    vm_name: str
    # The line from the port down to its VM: (x1, y1, x2, y2).
    link: tuple[float, float, float, float]


@dataclass(frozen=True)
class SegmentMap:
    width: float
    height: float
    segment: Box
    host_strip: Box
    title: str
    summary: str
    vms: tuple[VMNode, ...]
    ports: tuple[PublishedPort, ...] = field(default=())

    @property
    def description(self) -> str:
        """What the picture shows, for readers that cannot see it."""
        vms = "; ".join(
            f"{vm.name} {vm.address} ({vm.state}): "
            + (", ".join(chip.label for chip in vm.chips) or "no replicas")
            for vm in self.vms
        )
        ports = "; ".join(port.label for port in self.ports) or "no published ports"
        return f"{self.title}. {self.summary}. VMs: {vms or 'none'}. Published: {ports}."


def _title(env: Environment) -> tuple[str, str]:
    if not env.subnet:
        return (
            "No segment",
            "VMs reach the host only through user-mode networking (no subnet pool is set)",
        )
    network = ipaddress.IPv4Network(env.subnet)
    gateway = next(network.hosts())
    return f"Segment {network}", f"gateway {gateway} · egress {env.egress}"


def _chips(containers: list[Container], box: Box) -> tuple[ReplicaChip, ...]:
    shown = containers if len(containers) <= CHIPS_PER_VM else containers[: CHIPS_PER_VM - 1]
    chips = []
    y = box.y + VM_HEAD
    for container in shown:
        label = f"{container.service.name} v{container.release.version}"
        chip_box = Box(box.x + 8, y, box.width - 16, CHIP_HEIGHT)
        chips.append(ReplicaChip(chip_box, label, container.health))
        y += CHIP_HEIGHT + CHIP_GAP
    if len(shown) < len(containers):
        label = f"+{len(containers) - len(shown)} more"
        chips.append(ReplicaChip(Box(box.x + 8, y, box.width - 16, CHIP_HEIGHT), label, "more"))
    return tuple(chips)


def _vm_body_height(count: int) -> float:
    rows = min(count, CHIPS_PER_VM)
    return max(VM_MIN_BODY, rows * (CHIP_HEIGHT + CHIP_GAP) + CHIP_GAP)


def _place_vms(
    vms: list[VirtualMachine], containers: dict[int, list[Container]], top: float
) -> tuple[list[VMNode], float]:
    """VM boxes in rows of VMS_PER_ROW inside the segment; returns them and the
    bottom of the last row."""
    inner = MAP_WIDTH - 2 * MARGIN - 2 * VM_GAP
    columns = max(1, min(VMS_PER_ROW, len(vms)))
    width = (inner - (columns - 1) * VM_GAP) / columns
    nodes, y, bottom = [], top, top
    for row_start in range(0, len(vms), columns):
        row = vms[row_start : row_start + columns]
        height = VM_HEAD + max(_vm_body_height(len(containers.get(vm.pk, []))) for vm in row)
        for column, vm in enumerate(row):
            box = Box(MARGIN + VM_GAP + column * (width + VM_GAP), y, width, height)
            chips = _chips(containers.get(vm.pk, []), box)
            nodes.append(VMNode(box, vm.name, vm.segment_ip or "no address", vm.state, chips))
        bottom = y + height
        y = bottom + VM_GAP
    return nodes, bottom


def _port_boxes(count: int) -> tuple[list[Box], float]:
    """Boxes for ``count`` published ports in rows across the host strip, and
    the strip's height."""
    per_row = max(1, int((MAP_WIDTH - 2 * MARGIN) // (PORT_WIDTH + PORT_GAP)))
    boxes = [
        Box(
            MARGIN + 8 + (index % per_row) * (PORT_WIDTH + PORT_GAP),
            MARGIN + HOST_STRIP_HEAD + (index // per_row) * (PORT_HEIGHT + PORT_GAP),
            PORT_WIDTH,
            PORT_HEIGHT,
        )
        for index in range(count)
    ]
    rows = max(1, -(-count // per_row))
    return boxes, HOST_STRIP_HEAD + rows * (PORT_HEIGHT + PORT_GAP) + PORT_GAP


def _published(forward: PortForward, box: Box, target: Box) -> PublishedPort:
    label = f"127.0.0.1:{forward.host_port} → {forward.vm.name}:{forward.guest_port}"
    link = (box.centre_x, box.bottom, target.centre_x, target.y)
    return PublishedPort(box, label, forward.vm.name, link)


def segment_map(team, env: Environment) -> SegmentMap:
    """The picture of ``env``'s network, scoped to ``team``."""
    vms = list(
        VirtualMachine.objects.for_team(team)
        .filter(environment=env)
        .exclude(state=VMState.DELETED)
        .order_by("name")
    )
    containers: dict[int, list[Container]] = {}
    for container in (
        Container.objects.for_team(team)
        .filter(vm__in=vms)
        .exclude(state=Container.State.MISSING)
        .select_related("service", "release")
        .order_by("service__name", "name")
    ):
        containers.setdefault(container.vm_id, []).append(container)
    forwards = list(
        PortForward.objects.for_team(team)
        .filter(vm__in=vms)
        .exclude(guest_port=SSH_GUEST_PORT)
        .select_related("vm")
        .order_by("vm__name", "guest_port")
    )
    port_boxes, strip_height = _port_boxes(len(forwards))
    segment_top = MARGIN + strip_height + VM_GAP
    nodes, vms_bottom = _place_vms(vms, containers, segment_top + SEGMENT_HEAD)
    segment_bottom = (vms_bottom if nodes else segment_top + SEGMENT_HEAD + VM_MIN_BODY) + VM_GAP
    segment = Box(MARGIN, segment_top, MAP_WIDTH - 2 * MARGIN, segment_bottom - segment_top)
    by_vm = {vm.pk: node.box for vm, node in zip(vms, nodes, strict=True)}
    ports = [
        _published(forward, box, by_vm[forward.vm_id])
        for forward, box in zip(forwards, port_boxes, strict=True)
    ]
    title, summary = _title(env)
    return SegmentMap(
        width=MAP_WIDTH,
        height=segment.bottom + MARGIN,
        segment=segment,
        title=title,
        summary=summary,
        vms=tuple(nodes),
        host_strip=Box(MARGIN, MARGIN, MAP_WIDTH - 2 * MARGIN, strip_height),
        ports=tuple(ports),
    )
