"""Placement: which host a new VM goes to.

Filters drop hosts that cannot take the VM (disabled or draining, not enough
CPU or memory left under the host's overcommit ratios, image not available);
weighers order the rest: prod spreads across hosts (fewest VMs of the same
environment, then the emptiest host), dev and staging pack onto the fullest
host that still fits, to keep whole hosts free.  The scheduler works on plain
records so it can be tested and benchmarked without a database.
"""

import heapq
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class HostState:
    name: str
    cpus: int
    memory_mb: int
    cpu_overcommit: float = 1.0
    ram_overcommit: float = 1.0
    enabled: bool = True
    images: frozenset[str] | None = None  # None: every image is available
    used_vcpus: int = 0
    used_memory_mb: int = 0
    env_vms: Counter = field(default_factory=Counter)  # environment id -> VMs here

    @property
    def vcpu_limit(self) -> int:
        return int(self.cpus * self.cpu_overcommit)

    @property
    def memory_limit_mb(self) -> int:
        return int(self.memory_mb * self.ram_overcommit)

    def fits(self, vcpus: int, memory_mb: int) -> bool:
        return (
            self.used_vcpus + vcpus <= self.vcpu_limit
            and self.used_memory_mb + memory_mb <= self.memory_limit_mb
        )

    @property
    def usage(self) -> float:
        """How full the host is: the scarcer of CPU and memory, 0..1."""
        return max(
            self.used_vcpus / self.vcpu_limit if self.vcpu_limit else 1.0,
            self.used_memory_mb / self.memory_limit_mb if self.memory_limit_mb else 1.0,
        )


@dataclass(frozen=True)
class Request:
    vcpus: int
    memory_mb: int
    image: str
    kind: str  # dev, staging or prod
    environment: int | str


class NoValidHost(Exception):
    """Nothing fits; the message says how many hosts each filter removed."""


def _reason(request: Request, hosts: list[HostState]) -> str:
    disabled = sum(not h.enabled for h in hosts)
    no_image = sum(
        h.enabled and h.images is not None and request.image not in h.images for h in hosts
    )
    full = len(hosts) - disabled - no_image
    if not hosts:
        return "no hypervisor hosts are registered"
    return (
        f"no host can take {request.vcpus} vCPU / {request.memory_mb} MiB: "
        f"{disabled} disabled or draining, {no_image} without image {request.image!r}, "
        f"{full} without enough CPU or memory left"
    )


class Scheduler:
    """Places a batch of requests, updating each host's usage as it goes.

    Two heaps with lazy deletion (an entry carries the host's version; stale
    ones are dropped when met) order the hosts fullest-first and
    emptiest-first, so a placement costs about log(hosts) rather than a scan.
    """

    def __init__(self, hosts: list[HostState]):
        self.hosts = hosts
        self._by_name = {h.name: h for h in hosts}
        self._version = dict.fromkeys(self._by_name, 0)
        self._fullest_first: list[tuple] = []
        self._emptiest_first: list[tuple] = []
        for host in hosts:
            self._push(host)

    def _push(self, host: HostState) -> None:
        if host.enabled:
            version = self._version[host.name]
            heapq.heappush(self._fullest_first, (-host.usage, host.name, version))
            heapq.heappush(self._emptiest_first, (host.usage, host.name, version))

    def _usable(self, host: HostState, request: Request) -> bool:
        return (host.images is None or request.image in host.images) and host.fits(
            request.vcpus, request.memory_mb
        )

    def _first(self, heap: list[tuple], accept) -> HostState | None:
        """The best live host in ``heap`` that ``accept`` takes; the heap is left whole."""
        passed_over, found = [], None
        while heap:
            entry = heapq.heappop(heap)
            if entry[2] != self._version[entry[1]]:
                continue  # stale: the host has a newer entry
            host = self._by_name[entry[1]]
            passed_over.append(entry)
            if accept(host):
                found = host
                break
        for entry in passed_over:
            heapq.heappush(heap, entry)
        return found

    def _spread(self, request: Request) -> HostState | None:
        env = request.environment
        # Anti-affinity first: the emptiest host without a VM of this environment...
        host = self._first(
            self._emptiest_first, lambda h: not h.env_vms[env] and self._usable(h, request)
        )
        if host is not None:
            return host
        # ...else, among hosts that have some, the fewest siblings, then the emptiest.
        siblings = [
            h for h in self.hosts if h.enabled and h.env_vms[env] and self._usable(h, request)
        ]
        return min(siblings, key=lambda h: (h.env_vms[env], h.usage), default=None)

    def place(self, request: Request) -> HostState:
        if request.kind == "prod":
            chosen = self._spread(request)
        else:
            chosen = self._first(self._fullest_first, lambda h: self._usable(h, request))
        if chosen is None:
            raise NoValidHost(_reason(request, self.hosts))
        chosen.used_vcpus += request.vcpus
        chosen.used_memory_mb += request.memory_mb
        chosen.env_vms[request.environment] += 1
        self._version[chosen.name] += 1
        self._push(chosen)
        return chosen

    def place_all(self, requests: list[Request]) -> list[HostState]:
        return [self.place(r) for r in requests]
