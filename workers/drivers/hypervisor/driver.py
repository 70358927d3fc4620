"""The libvirt driver: one host, its Strata storage pools, and the lifecycle of
Strata's domains on it.

Every lifecycle step is a separate method that converges (re-running it after
it succeeded, or after a crash halfway, is safe), so the job layer can persist
progress between steps and resume anywhere.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import io
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import libvirt
import libvirt_qemu

from .domain_xml import (
    STRATA_NAMESPACE,
    STRATA_PREFIX,
    USER_NETDEV_ID,
    StrataMetadata,
    build_domain_xml,
    build_metadata_element,
    parse_libvirt_xml,
    parse_metadata_element,
)
from .errors import (
    HostUnreachable,
    HypervisorError,
    InvalidSpec,
    InvalidState,
    NotFound,
    OperationTimeout,
    libvirt_errors,
)
from .spec import (
    LIBVIRT_OBJECT_NAME_PATTERN,
    MAX_MEMORY_MIB,
    MAX_VCPUS,
    STRATA_ID_PATTERN,
    VIRT_TYPES,
    DomainSpec,
    require_absolute_path,
    require_domain_name,
    require_int,
    require_match,
    require_port,
    require_uuid,
)
from .virt_detect import (
    KVM_DEVICE,
    QEMU_CONF,
    VirtSupport,
    cpu_virt_flags,
    decide,
    is_local_qemu,
    kvm_device_problem,
    qemu_identity,
    reports_kvm_domain,
)

# libvirt prints every error to stderr by default; we raise them instead.
libvirt.registerErrorHandler(lambda _context, _error: None, None)

GIB = 1024**3
BASE_SUFFIX = ".base.qcow2"
DISK_SUFFIX = ".disk.qcow2"
SEED_SUFFIX = ".seed.iso"
CONSOLE_SUFFIX = ".log"
SHUTDOWN_POLL_SECONDS = 0.5
# How long an import waits for another process importing the same base; an
# upload of a few hundred MiB takes seconds, so this only trips on a hung one.
BASE_IMPORT_LOCK_SECONDS = 1800.0
LOCK_POLL_SECONDS = 0.2
# libvirt refuses to refresh a pool while a volume in it is being built (another
# job's disk); such builds take milliseconds, so a refresh waits for them.
POOL_REFRESH_SECONDS = 60.0
POOL_BUSY_MESSAGE = "has asynchronous jobs running"
# A guest still booting may miss the first ACPI event; ask again this often.
SHUTDOWN_REPEAT_SECONDS = 10.0
# Only metadata needs removing: internal snapshots and saved state go with the disk.
UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
)


class DomainState(enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    OTHER = "other"


_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: DomainState.PAUSED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: DomainState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_SHUTOFF: DomainState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: DomainState.CRASHED,
}


@dataclass(frozen=True)
class HostCapacity:
    cpus: int
    memory_mib: int
    free_memory_mib: int


@dataclass(frozen=True)
class DomainStats:
    state: DomainState
    vcpus: int
    cpu_time_ns: int
    memory_mib: int
    max_memory_mib: int
    # Host memory actually used by QEMU; None when the domain is not running.
    rss_mib: int | None


@dataclass(frozen=True)
class StrataDomain:
    name: str
    uuid: str
    state: DomainState
    metadata: StrataMetadata


class VolumeKind(enum.Enum):
    BASE = "base"
    DISK = "disk"
    SEED = "seed"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class StrataVolume:
    name: str
    path: str
    kind: VolumeKind
    # The VM (for disks and seeds) or image (for bases) the name belongs to.
    owner: str | None
    capacity_bytes: int
    allocation_bytes: int
    # The installation a disk or seed was made by (None: made before names carried
    # it, or by a driver given none). Bases are shared: named by content.
    installation_id: str | None = None


@dataclass(frozen=True)
class Snapshot:
    name: str
    created_at: int
    state: str


def _volume_kind(name: str) -> tuple[VolumeKind, str | None, str | None]:
    """Kind, owner and installation id of a volume, from its name: a base is
    ``IMAGE.base.qcow2``, a VM's disk ``VM.INSTALLATION.disk.qcow2`` (VM names and
    installation ids have no dots), its seed the same with ``.seed.iso``."""
    if name.endswith(BASE_SUFFIX):
        return VolumeKind.BASE, name[: -len(BASE_SUFFIX)], None
    for suffix, kind in ((DISK_SUFFIX, VolumeKind.DISK), (SEED_SUFFIX, VolumeKind.SEED)):
        if name.endswith(suffix):
            owner, _dot, installation_id = name[: -len(suffix)].partition(".")
            return kind, owner, installation_id or None
    return VolumeKind.UNKNOWN, None, None


def _host_forwards(usernet_table: str) -> set[tuple[int, int]]:
    """(host port, guest port) pairs from QEMU's ``info usernet`` table, whose
    forward rows read ``TCP[HOST_FORWARD] [FD] 127.0.0.1 PORT 10.0.2.15 PORT ...``."""
    forwards = set()
    for line in usernet_table.splitlines():
        fields = line.split()
        if not fields or fields[0] != "TCP[HOST_FORWARD]" or "127.0.0.1" not in fields:
            continue
        at = fields.index("127.0.0.1")
        try:
            forwards.add((int(fields[at + 1]), int(fields[at + 3])))
        except (IndexError, ValueError):
            continue
    return forwards


class Hypervisor:
    """A libvirt host as Strata uses it.

    ``data_dir`` is a directory on that host: the storage pool for disks, seeds
    and base images lives in ``data_dir/volumes``, console logs in
    ``data_dir/console`` (a pool too, so they can be removed over a remote URI).
    """

    def __init__(
        self,
        uri: str,
        data_dir: str | Path,
        *,
        pool_name: str = "strata",
        virt_type: str = "qemu",
        installation_id: str | None = None,
    ) -> None:
        require_match("pool_name", pool_name, LIBVIRT_OBJECT_NAME_PATTERN, "a pool name")
        if virt_type not in VIRT_TYPES:
            raise InvalidSpec("virt_type", f"must be one of {VIRT_TYPES}, got {virt_type!r}")
        if installation_id is not None:
            require_match("installation_id", installation_id, STRATA_ID_PATTERN, "a Strata id")
        # Marks the domains and VM volumes this driver makes, so that another
        # Strata on the same libvirtd can tell them from its own.
        self.installation_id = installation_id
        self.uri = uri
        self.data_dir = require_absolute_path("data_dir", str(data_dir))
        self.pool_name = pool_name
        self.console_pool_name = f"{pool_name}-console"
        self.virt_type = virt_type
        self._connection = self._open()

    def _open(self) -> libvirt.virConnect:
        try:
            return libvirt.open(self.uri)
        except libvirt.libvirtError as error:
            raise HostUnreachable(f"cannot open {self.uri}: {error.get_error_message()}") from error

    @property
    def _conn(self) -> libvirt.virConnect:
        # A restarted libvirtd leaves this client closed (seen at its first call
        # after the restart, which fails as ConnectionLost): open a new one.
        try:
            alive = self._connection.isAlive()
        except libvirt.libvirtError:
            alive = False
        if not alive:
            self._connection = self._open()
        return self._connection

    def close(self) -> None:
        with libvirt_errors():
            self._connection.close()

    def __enter__(self) -> Hypervisor:
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self.close()

    @property
    def connection(self) -> libvirt.virConnect:
        return self._conn

    # -- host -------------------------------------------------------------

    def capacity(self) -> HostCapacity:
        with libvirt_errors():
            _model, memory_mib, cpus, *_rest = self._conn.getInfo()
            free_bytes = self._conn.getFreeMemory()
        return HostCapacity(cpus=cpus, memory_mib=memory_mib, free_memory_mib=free_bytes // 2**20)

    def warm_capabilities(self, virt_type: str | None = None) -> None:
        """Ask libvirtd for the host's capabilities and those of ``virt_type``'s
        (default: this driver's) domains, so it probes QEMU now (seconds on a
        fresh host), not in the first job's define. A driver without domain
        capabilities (test) is fine."""
        virt_type = virt_type or self.virt_type
        if virt_type not in VIRT_TYPES:
            raise InvalidSpec("virt_type", f"must be one of {VIRT_TYPES}, got {virt_type!r}")
        with libvirt_errors():
            self._conn.getCapabilities()
            try:
                # The architecture and machine every Strata domain uses.
                self._conn.getDomainCapabilities(None, "x86_64", "q35", virt_type, 0)
            except libvirt.libvirtError as error:
                if error.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                    raise

    def detect_virtualisation(
        self, kvm_device: str = KVM_DEVICE, qemu_conf: str = QEMU_CONF
    ) -> VirtSupport:
        """What hardware virtualisation this host can do and the domain type to
        use (see ``virt_detect``). ``kvm_device`` and ``qemu_conf`` are checked
        only when the host is this machine's QEMU driver."""
        with libvirt_errors():
            flags = cpu_virt_flags(self._conn.getCapabilities())
            uri = self._conn.getURI()
        try:
            kvm_domain = reports_kvm_domain(
                self._conn.getDomainCapabilities(None, "x86_64", "q35", "kvm", 0)
            )
        except libvirt.libvirtError:
            # Unsupported by the driver, or no usable KVM: both mean no kvm domains.
            kvm_domain = False
        device_checked = is_local_qemu(uri)
        device_problem = None
        if device_checked:
            try:
                device_problem = kvm_device_problem(qemu_identity(qemu_conf), kvm_device)
            except KeyError as error:
                device_problem = f"libvirt's QEMU user or group does not exist: {error}"
        return decide(flags, kvm_domain, device_problem, device_checked)

    # -- naming -----------------------------------------------------------

    @property
    def volumes_dir(self) -> str:
        return os.path.join(self.data_dir, "volumes")

    @property
    def console_dir(self) -> str:
        return os.path.join(self.data_dir, "console")

    def _vm_volume_names(self, vm_name: str, suffix: str) -> tuple[str, str]:
        """The VM's volume name carrying this installation, and the unmarked one."""
        unmarked = require_domain_name("name", vm_name) + suffix
        if self.installation_id is None:
            return unmarked, unmarked
        return f"{vm_name}.{self.installation_id}{suffix}", unmarked

    def _vm_volume_name(self, vm_name: str, suffix: str) -> str:
        marked, unmarked = self._vm_volume_names(vm_name, suffix)
        # A VM made before volumes carried the installation keeps its volume.
        if (
            marked != unmarked
            and self._volume(marked) is None
            and self._volume(unmarked) is not None
        ):
            return unmarked
        return marked

    def disk_path(self, vm_name: str) -> str:
        return os.path.join(self.volumes_dir, self._vm_volume_name(vm_name, DISK_SUFFIX))

    def seed_path(self, vm_name: str) -> str:
        return os.path.join(self.volumes_dir, self._vm_volume_name(vm_name, SEED_SUFFIX))

    def console_log_path(self, vm_name: str) -> str:
        name = require_domain_name("name", vm_name)
        return os.path.join(self.console_dir, name + CONSOLE_SUFFIX)

    # -- storage ----------------------------------------------------------

    def ensure_storage(self) -> None:
        """Create, build, start and autostart both Strata pools where missing."""
        self._ensure_pool(self.pool_name, self.volumes_dir)
        self._ensure_pool(self.console_pool_name, self.console_dir)

    def _ensure_pool(self, name: str, path: str) -> None:
        # Jobs on a fresh host all get here at once: whatever another one did
        # first (define, start) counts as done.
        with libvirt_errors():
            pool = self._find_pool(name)
            if pool is None:
                root = ET.Element("pool", type="dir")
                ET.SubElement(root, "name").text = name
                target = ET.SubElement(root, "target")
                ET.SubElement(target, "path").text = path
                try:
                    pool = self._conn.storagePoolDefineXML(ET.tostring(root, encoding="unicode"))
                except libvirt.libvirtError:
                    pool = self._find_pool(name)
                    if pool is None:
                        raise
            if not pool.isActive():
                try:
                    # Building an existing directory only fixes its permissions.
                    pool.build(0)
                    pool.create(0)
                except libvirt.libvirtError:
                    if not pool.isActive():
                        raise
            if not pool.autostart():
                pool.setAutostart(1)

    def _find_pool(self, name: str) -> libvirt.virStoragePool | None:
        try:
            return self._conn.storagePoolLookupByName(name)
        except libvirt.libvirtError as error:
            if error.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise
            return None

    def _pool(self, name: str | None = None) -> libvirt.virStoragePool:
        with libvirt_errors():
            return self._conn.storagePoolLookupByName(name or self.pool_name)

    def _volume(self, name: str, pool_name: str | None = None) -> libvirt.virStorageVol | None:
        pool = self._pool(pool_name)
        with libvirt_errors():
            try:
                return pool.storageVolLookupByName(name)
            except libvirt.libvirtError as error:
                if error.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                    return None
                raise

    @staticmethod
    def _refresh(pool: libvirt.virStoragePool) -> None:
        deadline = time.monotonic() + POOL_REFRESH_SECONDS
        while True:
            try:
                pool.refresh(0)
                return
            except libvirt.libvirtError as error:
                busy = POOL_BUSY_MESSAGE in (error.get_error_message() or "")
                if not busy:
                    raise
                if time.monotonic() >= deadline:
                    raise OperationTimeout(f"pool {pool.name()} stayed busy", error) from error
            time.sleep(LOCK_POLL_SECONDS)

    def _upload(self, volume: libvirt.virStorageVol, read_chunk, length: int) -> None:
        stream = self._conn.newStream(0)
        try:
            volume.upload(stream, 0, length, 0)
            stream.sendAll(lambda _stream, size, _opaque: read_chunk(size), None)
            stream.finish()
        except BaseException:
            try:
                stream.abort()
            except libvirt.libvirtError:
                pass
            raise

    def base_import_lock_path(self, image_name: str) -> str:
        """The file whose lock serialises imports of one base into this pool."""
        require_match("image_name", image_name, LIBVIRT_OBJECT_NAME_PATTERN, "an image name")
        return os.path.join(self.data_dir, "locks", f"{self.pool_name}.{image_name}.import.lock")

    @contextlib.contextmanager
    def _base_import_lock(self, image_name: str) -> Iterator[None]:
        """Hold an exclusive flock for importing ``image_name``: worker processes
        sharing this data dir import a base one at a time, and the kernel drops
        the lock of a process that dies, so a crash never leaves it held."""
        path = self.base_import_lock_path(image_name)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            # Closed in the finally below, which also releases the lock.
            lock_file = open(path, "a")
        except OSError as error:
            raise HypervisorError(f"cannot open the import lock {path}: {error}") from error
        deadline = time.monotonic() + BASE_IMPORT_LOCK_SECONDS
        try:
            while True:
                try:
                    fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise OperationTimeout(
                            f"another import of {image_name}{BASE_SUFFIX} held its lock "
                            f"for {BASE_IMPORT_LOCK_SECONDS:.0f} s"
                        ) from None
                    time.sleep(LOCK_POLL_SECONDS)
            yield
        finally:
            lock_file.close()

    def import_base_image(self, image_name: str, source_path: str | Path) -> StrataVolume:
        """Upload a checked qcow2 image (a local file) as base volume ``image_name``.

        Runs once per image: a complete volume of the same size is reused. Jobs
        importing the same base at once take turns (a per-pool, per-base lock),
        so only a volume cut short by a crash mid-upload is ever seen smaller
        than its source; it is replaced, unless a VM disk is backed by it: then
        the name already belongs to other content and InvalidState is raised
        (name bases by content).
        """
        require_match("image_name", image_name, LIBVIRT_OBJECT_NAME_PATTERN, "an image name")
        source_size = os.path.getsize(source_path)
        volume_name = image_name + BASE_SUFFIX
        pool = self._pool()
        with self._base_import_lock(image_name), libvirt_errors():
            self._refresh(pool)
            volume = self._volume(volume_name)
            if volume is not None and self._is_complete_base(volume, source_size):
                return self._describe(volume)
            if volume is not None:
                if self._overlays_of(volume.path()):
                    raise InvalidState(
                        f"base {volume_name} differs from {source_path} and disks use it"
                    )
                volume.delete(0)
            # Capacity 0 and raw: libvirt creates an empty file and the upload
            # writes the qcow2 bytes verbatim; the refresh then probes the format.
            volume = pool.createXML(self._volume_xml(volume_name, 0, "raw"), 0)
            with open(source_path, "rb") as source:
                self._upload(volume, source.read, source_size)
            self._refresh(pool)
            volume = pool.storageVolLookupByName(volume_name)
            if not self._is_complete_base(volume, source_size):
                volume.delete(0)
                raise HypervisorError(f"{volume_name} is not a standalone qcow2 image")
            return self._describe(volume)

    def _overlays_of(self, base_path: str) -> list[str]:
        """Names of the volumes whose backing file is ``base_path``."""
        return [
            volume.name()
            for volume in self._pool().listAllVolumes(0)
            if parse_libvirt_xml(volume.XMLDesc(0)).findtext("backingStore/path") == base_path
        ]

    @staticmethod
    def _is_complete_base(volume: libvirt.virStorageVol, size: int) -> bool:
        root = parse_libvirt_xml(volume.XMLDesc(0))
        physical = root.findtext("physical")
        # A base with a backing file would let a guest read another file.
        return (
            root.find("target/format[@type='qcow2']") is not None
            and root.find("backingStore/path") is None
            and physical is not None
            and int(physical) == size
        )

    @staticmethod
    def _volume_xml(
        name: str,
        capacity_bytes: int,
        volume_format: str,
        backing_path: str | None = None,
    ) -> str:
        root = ET.Element("volume")
        ET.SubElement(root, "name").text = name
        ET.SubElement(root, "capacity", unit="bytes").text = str(capacity_bytes)
        ET.SubElement(root, "allocation", unit="bytes").text = "0"
        target = ET.SubElement(root, "target")
        ET.SubElement(target, "format", type=volume_format)
        if backing_path is not None:
            backing = ET.SubElement(root, "backingStore")
            ET.SubElement(backing, "path").text = backing_path
            ET.SubElement(backing, "format", type="qcow2")
        return ET.tostring(root, encoding="unicode")

    def create_disk(self, vm_name: str, image_name: str, size_gib: int) -> str:
        """The VM's disk: a qcow2 overlay on the base volume, ``size_gib`` large.

        Nothing of the base is copied; the guest's writes land in the overlay.
        Returns the disk's path.
        """
        require_domain_name("name", vm_name)
        require_match("image_name", image_name, LIBVIRT_OBJECT_NAME_PATTERN, "an image name")
        require_int("size_gib", size_gib, 1, 64 * 1024)
        base = self._volume(image_name + BASE_SUFFIX)
        if base is None:
            raise NotFound(f"base image {image_name!r} is not imported")
        with libvirt_errors():
            base_capacity = base.info()[1]
            capacity = size_gib * GIB
            if capacity < base_capacity:
                raise InvalidSpec(
                    "size_gib", f"must be at least the image's {-(-base_capacity // GIB)} GiB"
                )
            name = self._vm_volume_name(vm_name, DISK_SUFFIX)
            volume = self._volume(name)
            if volume is None:
                xml = self._volume_xml(name, capacity, "qcow2", base.path())
                volume = self._pool().createXML(xml, 0)
            elif volume.info()[1] < capacity:
                volume.resize(capacity, 0)
            return volume.path()

    def write_seed(self, vm_name: str, seed_iso: bytes) -> str:
        """Store the NoCloud seed as a raw volume (rewritten on every call); its path."""
        name = self._vm_volume_name(vm_name, SEED_SUFFIX)
        with libvirt_errors():
            volume = self._volume(name)
            if volume is not None:
                volume.delete(0)
            volume = self._pool().createXML(self._volume_xml(name, 0, "raw"), 0)
            self._upload(volume, io.BytesIO(seed_iso).read, len(seed_iso))
            return volume.path()

    def _describe(self, volume: libvirt.virStorageVol) -> StrataVolume:
        name = volume.name()
        kind, owner, installation_id = _volume_kind(name)
        _type, capacity, allocation = volume.info()
        return StrataVolume(name, volume.path(), kind, owner, capacity, allocation, installation_id)

    def list_strata_volumes(self) -> list[StrataVolume]:
        """Every volume in Strata's pool, classified by name (for orphan detection)."""
        pool = self._pool()
        with libvirt_errors():
            self._refresh(pool)
            return sorted(
                (self._describe(volume) for volume in pool.listAllVolumes(0)),
                key=lambda volume: volume.name,
            )

    def delete_base_image(self, image_name: str) -> None:
        """Remove a base volume no VM disk is backed by; InvalidState otherwise."""
        require_match("image_name", image_name, LIBVIRT_OBJECT_NAME_PATTERN, "an image name")
        volume = self._volume(image_name + BASE_SUFFIX)
        if volume is None:
            return
        with libvirt_errors():
            users = self._overlays_of(volume.path())
        if users:
            raise InvalidState(f"base image {image_name!r} is used by {', '.join(users)}")
        self._delete_volume(image_name + BASE_SUFFIX)

    def _delete_volume(self, name: str, pool_name: str | None = None) -> None:
        with libvirt_errors():
            if pool_name == self.console_pool_name:
                # virtlogd, not libvirt's storage API, made the log: the pool
                # knows it only after a refresh.
                self._refresh(self._pool(pool_name))
            volume = self._volume(name, pool_name)
            if volume is None:
                return
            try:
                volume.delete(0)
            except libvirt.libvirtError as error:
                if error.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                    raise

    # -- domains ----------------------------------------------------------

    def _domain(self, uuid: str) -> libvirt.virDomain:
        canonical = require_uuid("uuid", uuid)
        with libvirt_errors():
            return self._conn.lookupByUUIDString(canonical)

    def _find_domain(self, uuid: str) -> libvirt.virDomain | None:
        try:
            return self._domain(uuid)
        except NotFound:
            return None

    def define(self, spec: DomainSpec) -> None:
        """Define (or redefine, same UUID and name) the domain described by ``spec``."""
        if spec.virt_type != self.virt_type:
            raise InvalidSpec("virt_type", f"this host runs {self.virt_type!r} domains")
        xml = build_domain_xml(spec, self.installation_id)
        with libvirt_errors():
            self._conn.defineXML(xml)

    def state(self, uuid: str) -> DomainState:
        with libvirt_errors():
            return _STATES.get(self._domain(uuid).state(0)[0], DomainState.OTHER)

    def start(self, uuid: str) -> None:
        domain = self._domain(uuid)
        with libvirt_errors():
            if domain.isActive():
                if domain.state(0)[0] == libvirt.VIR_DOMAIN_PAUSED:
                    domain.resume()
                return
            domain.create()

    def shutdown(self, uuid: str, timeout: float = 60.0) -> bool:
        """Ask the guest to power off; force it off after ``timeout`` seconds.

        Returns True when the guest stopped by itself (or was not there at
        all), False when it had to be forced.
        """
        domain = self._find_domain(uuid)
        if domain is None:
            return True
        deadline = time.monotonic() + timeout
        next_request = 0.0
        with libvirt_errors():
            while domain.isActive():
                now = time.monotonic()
                if now >= deadline:
                    self._force_off(domain)
                    return False
                if now >= next_request:
                    try:
                        domain.shutdown()
                    except libvirt.libvirtError as error:
                        # It may have stopped between the check and the request.
                        if error.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                            raise
                    next_request = now + SHUTDOWN_REPEAT_SECONDS
                time.sleep(SHUTDOWN_POLL_SECONDS)
        return True

    @staticmethod
    def _force_off(domain: libvirt.virDomain) -> None:
        try:
            domain.destroy()
        except libvirt.libvirtError as error:
            if error.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                raise

    def force_off(self, uuid: str) -> None:
        domain = self._find_domain(uuid)
        if domain is not None:
            with libvirt_errors():
                self._force_off(domain)

    def add_live_port_forward(self, uuid: str, host_port: int, guest_port: int) -> None:
        """Forward 127.0.0.1:``host_port`` to the running guest's ``guest_port`` now.

        For ``user`` networking; QEMU keeps forwards only until it exits, so the
        caller also redefines the domain with the forward for later starts.
        Adding a forward that exists already is a no-op.
        """
        require_port("host_port", host_port)
        require_port("guest_port", guest_port)
        domain = self._domain(uuid)
        hmp = libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
        with libvirt_errors():
            if not domain.isActive():
                return
            table = libvirt_qemu.qemuMonitorCommand(domain, "info usernet", hmp)
            if (host_port, guest_port) in _host_forwards(table):
                return
            # Only validated integers reach the monitor command.
            answer = libvirt_qemu.qemuMonitorCommand(
                domain,
                f"hostfwd_add {USER_NETDEV_ID} tcp:127.0.0.1:{int(host_port)}-:{int(guest_port)}",
                hmp,
            )
        if answer.strip():
            raise HypervisorError(f"QEMU refused the forward {host_port}->{guest_port}: {answer}")

    def reboot(self, uuid: str) -> None:
        domain = self._domain(uuid)
        with libvirt_errors():
            if not domain.isActive():
                raise InvalidState("cannot reboot a domain that is not running")
            domain.reboot(0)

    def destroy(self, vm_name: str, uuid: str) -> None:
        """Remove the VM and everything it owns; whatever is already gone is skipped.

        Order matters for resuming: the domain goes first, so a crash leaves
        only unreferenced volumes, which a re-run (or the orphan scan) removes.
        """
        require_domain_name("name", vm_name)
        domain = self._find_domain(uuid)
        if domain is not None:
            with libvirt_errors():
                self._force_off(domain)
                try:
                    domain.undefineFlags(UNDEFINE_FLAGS)
                except libvirt.libvirtError as error:
                    if error.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                        raise
        for suffix in (DISK_SUFFIX, SEED_SUFFIX):
            for name in set(self._vm_volume_names(vm_name, suffix)):
                self._delete_volume(name)
        self._delete_volume(vm_name + CONSOLE_SUFFIX, self.console_pool_name)

    def resize(self, uuid: str, *, vcpus: int, memory_mib: int) -> None:
        """Change vCPUs and memory of a stopped domain in one redefinition."""
        require_int("vcpus", vcpus, 1, MAX_VCPUS)
        require_int("memory_mib", memory_mib, 1, MAX_MEMORY_MIB)
        domain = self._domain(uuid)
        with libvirt_errors():
            if domain.isActive():
                raise InvalidState("resize needs the domain shut off")
            root = parse_libvirt_xml(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            vcpu = root.find("vcpu")
            vcpu.attrib.pop("current", None)
            vcpu.text = str(vcpus)
            for tag in ("memory", "currentMemory"):
                element = root.find(tag)
                if element is None:
                    element = ET.SubElement(root, tag)
                element.attrib = {"unit": "MiB"}
                element.text = str(memory_mib)
            self._conn.defineXML(ET.tostring(root, encoding="unicode"))

    def domain_stats(self, uuid: str) -> DomainStats:
        domain = self._domain(uuid)
        with libvirt_errors():
            state, max_memory_kib, memory_kib, vcpus, cpu_time_ns = domain.info()
            rss_mib = None
            if domain.isActive():
                rss_kib = domain.memoryStats().get("rss")
                rss_mib = rss_kib // 1024 if rss_kib is not None else None
        return DomainStats(
            state=_STATES.get(state, DomainState.OTHER),
            vcpus=vcpus,
            cpu_time_ns=cpu_time_ns,
            memory_mib=memory_kib // 1024,
            max_memory_mib=max_memory_kib // 1024,
            rss_mib=rss_mib,
        )

    def guest_addresses(self, uuid: str, *, from_agent: bool = False) -> list[str]:
        """IPv4 addresses of a ``network``-mode guest: DHCP lease, or the guest agent."""
        source = (
            libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT
            if from_agent
            else libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE
        )
        domain = self._domain(uuid)
        with libvirt_errors():
            interfaces = domain.interfaceAddresses(source, 0) or {}
        return [
            address["addr"]
            for interface in interfaces.values()
            for address in interface.get("addrs") or []
            if address["type"] == libvirt.VIR_IP_ADDR_TYPE_IPV4
            and not address["addr"].startswith("127.")
        ]

    def metadata(self, uuid: str) -> StrataMetadata:
        domain = self._domain(uuid)
        with libvirt_errors():
            xml = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, STRATA_NAMESPACE, 0)
        return parse_metadata_element(xml)

    def set_metadata(self, uuid: str, metadata: StrataMetadata) -> None:
        domain = self._domain(uuid)
        if metadata.installation_id is None:
            metadata = replace(metadata, installation_id=self.installation_id)
        element = build_metadata_element(metadata)
        # virDomainSetMetadata takes the element without a namespace; it adds the key's.
        for node in element.iter():
            node.tag = node.tag.split("}", 1)[1]
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        with libvirt_errors():
            if domain.isActive():
                flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
            domain.setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                ET.tostring(element, encoding="unicode"),
                STRATA_PREFIX,
                STRATA_NAMESPACE,
                flags,
            )

    def _strata_domains(self) -> Iterator[StrataDomain]:
        with libvirt_errors():
            domains = self._conn.listAllDomains(0)
        for domain in domains:
            try:
                with libvirt_errors():
                    xml = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, STRATA_NAMESPACE, 0)
                    name, uuid, state = domain.name(), domain.UUIDString(), domain.state(0)[0]
            except NotFound:
                # Not Strata's, or undefined while we were listing.
                continue
            yield StrataDomain(
                name=name,
                uuid=uuid,
                state=_STATES.get(state, DomainState.OTHER),
                metadata=parse_metadata_element(xml),
            )

    def list_strata_domains(self) -> list[StrataDomain]:
        """Domains carrying Strata's metadata, running or not (for drift and orphans)."""
        return sorted(self._strata_domains(), key=lambda domain: domain.name)

    # -- snapshots --------------------------------------------------------

    def create_snapshot(self, uuid: str, name: str) -> Snapshot:
        """An internal snapshot (disk and, when running, memory); reused if it exists."""
        require_match("snapshot", name, LIBVIRT_OBJECT_NAME_PATTERN, "a snapshot name")
        domain = self._domain(uuid)
        with libvirt_errors():
            existing = self._find_snapshot(domain, name)
            if existing is not None:
                return self._describe_snapshot(existing)
            root = ET.Element("domainsnapshot")
            ET.SubElement(root, "name").text = name
            disks = ET.SubElement(root, "disks")
            for target, read_only in self._disk_targets(domain):
                # Internal snapshots live inside qcow2 files; the seed is raw.
                # libvirt 9.0 already skips read-only disks; saying so keeps
                # it explicit.
                ET.SubElement(
                    disks, "disk", name=target, snapshot="no" if read_only else "internal"
                )
            snapshot = domain.snapshotCreateXML(ET.tostring(root, encoding="unicode"), 0)
            return self._describe_snapshot(snapshot)

    @staticmethod
    def _disk_targets(domain: libvirt.virDomain) -> list[tuple[str, bool]]:
        root = parse_libvirt_xml(domain.XMLDesc(0))
        return [
            (disk.find("target").get("dev"), disk.find("readonly") is not None)
            for disk in root.findall("devices/disk")
        ]

    @staticmethod
    def _find_snapshot(domain: libvirt.virDomain, name: str) -> libvirt.virDomainSnapshot | None:
        try:
            return domain.snapshotLookupByName(name, 0)
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
                return None
            raise

    @staticmethod
    def _describe_snapshot(snapshot: libvirt.virDomainSnapshot) -> Snapshot:
        root = parse_libvirt_xml(snapshot.getXMLDesc(0))
        return Snapshot(
            name=snapshot.getName(),
            created_at=int(root.findtext("creationTime") or 0),
            state=root.findtext("state") or "",
        )

    def list_snapshots(self, uuid: str) -> list[Snapshot]:
        domain = self._domain(uuid)
        with libvirt_errors():
            snapshots = [self._describe_snapshot(s) for s in domain.listAllSnapshots(0)]
        return sorted(snapshots, key=lambda snapshot: (snapshot.created_at, snapshot.name))

    def revert_snapshot(self, uuid: str, name: str) -> None:
        domain = self._domain(uuid)
        with libvirt_errors():
            snapshot = domain.snapshotLookupByName(name, 0)
            domain.revertToSnapshot(snapshot, 0)

    def delete_snapshot(self, uuid: str, name: str) -> None:
        domain = self._domain(uuid)
        with libvirt_errors():
            snapshot = self._find_snapshot(domain, name)
            if snapshot is not None:
                snapshot.delete(0)
