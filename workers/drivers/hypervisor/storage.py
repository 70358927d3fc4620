"""Strata's storage on one host: two directory pools (volumes, console logs),
base images imported once per content, each VM's qcow2 overlay and seed.

Every step converges (re-running it after it succeeded, or after a crash
halfway, is safe), so the job layer can persist progress between steps.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import io
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt

from .config import PoolConfig, VolumeConfig, backing_path, is_standalone_qcow2
from .errors import (
    HypervisorError,
    InvalidSpec,
    InvalidState,
    NotFound,
    OperationTimeout,
    libvirt_errors,
)
from .host import Host
from .validation import (
    LIBVIRT_OBJECT_NAME_PATTERN,
    require_absolute_path,
    require_domain_name,
    require_int,
    require_match,
)

GIB = 1024**3
MAX_DISK_GIB = 64 * 1024
BASE_SUFFIX = ".base.qcow2"
DISK_SUFFIX = ".disk.qcow2"
SEED_SUFFIX = ".seed.iso"
# A template's frozen disk and seed: not a VM's, so never swept as an orphan disk.
TEMPLATE_DISK_SUFFIX = ".template.qcow2"
TEMPLATE_SEED_SUFFIX = ".template-seed.iso"
CONSOLE_SUFFIX = ".log"
# How long an import waits for another process importing the same base; an
# upload of a few hundred MiB takes seconds, so this only trips on a hung one.
BASE_IMPORT_LOCK_SECONDS = 1800.0
LOCK_POLL_SECONDS = 0.2
# libvirt refuses to refresh a pool while a volume in it is being built (another
# job's disk); such builds take milliseconds, so a refresh waits for them.
POOL_REFRESH_SECONDS = 60.0
POOL_BUSY_MESSAGE = "has asynchronous jobs running"


def wait_for_flock(lock_file, seconds: float, holder: str) -> None:
    """Take an exclusive flock on ``lock_file``, waiting at most ``seconds``;
    OperationTimeout naming ``holder`` (who has it) after that."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise OperationTimeout(f"{holder} held its lock for {seconds:.0f} s") from None
            time.sleep(LOCK_POLL_SECONDS)


class VolumeKind(enum.Enum):
    BASE = "base"
    DISK = "disk"
    SEED = "seed"
    TEMPLATE = "template"
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


def _volume_kind(name: str) -> tuple[VolumeKind, str | None, str | None]:
    """Kind, owner and installation id of a volume, from its name: a base is
    ``IMAGE.base.qcow2``, a VM's disk ``VM.INSTALLATION.disk.qcow2`` (VM names and
    installation ids have no dots), its seed the same with ``.seed.iso``."""
    if name.endswith(BASE_SUFFIX):
        return VolumeKind.BASE, name[: -len(BASE_SUFFIX)], None
    for suffix, kind in (
        (DISK_SUFFIX, VolumeKind.DISK),
        (SEED_SUFFIX, VolumeKind.SEED),
        (TEMPLATE_DISK_SUFFIX, VolumeKind.TEMPLATE),
        (TEMPLATE_SEED_SUFFIX, VolumeKind.TEMPLATE),
    ):
        if name.endswith(suffix):
            owner, _dot, installation_id = name[: -len(suffix)].partition(".")
            return kind, owner, installation_id or None
    return VolumeKind.UNKNOWN, None, None


def _describe(volume: libvirt.virStorageVol) -> StrataVolume:
    name = volume.name()
    kind, owner, installation_id = _volume_kind(name)
    _type, capacity, allocation = volume.info()
    return StrataVolume(name, volume.path(), kind, owner, capacity, allocation, installation_id)


def refresh_pool(pool: libvirt.virStoragePool) -> None:
    """Refresh ``pool``, waiting out other jobs' volume builds (bounded)."""
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


def _require_image_name(image_name: str) -> str:
    return require_match("image_name", image_name, LIBVIRT_OBJECT_NAME_PATTERN, "an image name")


class Storage:
    """The pools in ``data_dir`` on ``host``: disks, seeds and base images in
    ``data_dir/volumes``, console logs in ``data_dir/console`` (a pool too, so
    they can be removed over a remote URI). VM volumes are named with
    ``installation_id``, so another Strata on the same libvirtd can tell them
    from its own."""

    def __init__(
        self, host: Host, data_dir: str | Path, pool_name: str, installation_id: str | None
    ) -> None:
        require_match("pool_name", pool_name, LIBVIRT_OBJECT_NAME_PATTERN, "a pool name")
        self.data_dir = require_absolute_path("data_dir", str(data_dir))
        self.pool_name = pool_name
        self.console_pool_name = f"{pool_name}-console"
        self.installation_id = installation_id
        self._host = host

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

    def template_disk_path(self, template_name: str) -> str:
        return os.path.join(
            self.volumes_dir, self._vm_volume_names(template_name, TEMPLATE_DISK_SUFFIX)[0]
        )

    def template_seed_path(self, template_name: str) -> str:
        return os.path.join(
            self.volumes_dir, self._vm_volume_names(template_name, TEMPLATE_SEED_SUFFIX)[0]
        )

    @property
    def templates_dir(self) -> str:
        """Where templates' memory states are saved (written by libvirtd itself)."""
        return os.path.join(self.data_dir, "templates")

    def console_log_path(self, vm_name: str) -> str:
        name = require_domain_name("name", vm_name)
        return os.path.join(self.console_dir, name + CONSOLE_SUFFIX)

    def base_import_lock_path(self, image_name: str) -> str:
        """The file whose lock serialises imports of one base into this pool."""
        _require_image_name(image_name)
        return os.path.join(self.data_dir, "locks", f"{self.pool_name}.{image_name}.import.lock")

    # -- pools ------------------------------------------------------------

    def ensure_pools(self) -> None:
        """Create, build, start and autostart both Strata pools where missing."""
        self._ensure_pool(PoolConfig(self.pool_name, self.volumes_dir))
        self._ensure_pool(PoolConfig(self.console_pool_name, self.console_dir))

    def _ensure_pool(self, config: PoolConfig) -> None:
        # Jobs on a fresh host all get here at once: whatever another one did
        # first (define, start) counts as done.
        with libvirt_errors():
            pool = self._find_pool(config.name)
            if pool is None:
                try:
                    pool = self._host.connection.storagePoolDefineXML(config.to_xml())
                except libvirt.libvirtError:
                    pool = self._find_pool(config.name)
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
            return self._host.connection.storagePoolLookupByName(name)
        except libvirt.libvirtError as error:
            if error.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise
            return None

    def _pool(self, name: str | None = None) -> libvirt.virStoragePool:
        with libvirt_errors():
            return self._host.connection.storagePoolLookupByName(name or self.pool_name)

    def _volume(self, name: str, pool_name: str | None = None) -> libvirt.virStorageVol | None:
        pool = self._pool(pool_name)
        with libvirt_errors():
            try:
                return pool.storageVolLookupByName(name)
            except libvirt.libvirtError as error:
                if error.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                    return None
                raise

    def _upload(self, volume: libvirt.virStorageVol, read_chunk: Callable, length: int) -> None:
        stream = self._host.connection.newStream(0)
        try:
            volume.upload(stream, 0, length, 0)
            stream.sendAll(lambda _stream, size, _opaque: read_chunk(size), None)
            stream.finish()
        except BaseException:
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
            raise

    # -- base images ------------------------------------------------------

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
        try:
            wait_for_flock(
                lock_file, BASE_IMPORT_LOCK_SECONDS, f"another import of {image_name}{BASE_SUFFIX}"
            )
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
        _require_image_name(image_name)
        source_size = os.path.getsize(source_path)
        volume_name = image_name + BASE_SUFFIX
        pool = self._pool()
        with self._base_import_lock(image_name), libvirt_errors():
            refresh_pool(pool)
            volume = self._volume(volume_name)
            if volume is not None and is_standalone_qcow2(volume.XMLDesc(0), source_size):
                return _describe(volume)
            if volume is not None:
                if self._overlays_of(volume.path()):
                    raise InvalidState(
                        f"base {volume_name} differs from {source_path} and disks use it"
                    )
                volume.delete(0)
            # Capacity 0 and raw: libvirt creates an empty file and the upload
            # writes the qcow2 bytes verbatim; the refresh then probes the format.
            volume = pool.createXML(VolumeConfig(volume_name, 0, "raw").to_xml(), 0)
            with open(source_path, "rb") as source:
                self._upload(volume, source.read, source_size)
            refresh_pool(pool)
            volume = pool.storageVolLookupByName(volume_name)
            if not is_standalone_qcow2(volume.XMLDesc(0), source_size):
                volume.delete(0)
                raise HypervisorError(f"{volume_name} is not a standalone qcow2 image")
            return _describe(volume)

    def _overlays_of(self, base_path: str) -> list[str]:
        """Names of the volumes whose backing file is ``base_path``."""
        return [
            volume.name()
            for volume in self._pool().listAllVolumes(0)
            if backing_path(volume.XMLDesc(0)) == base_path
        ]

    def delete_base_image(self, image_name: str) -> None:
        """Remove a base volume no VM disk is backed by; InvalidState otherwise."""
        _require_image_name(image_name)
        volume = self._volume(image_name + BASE_SUFFIX)
        if volume is None:
            return
        with libvirt_errors():
            users = self._overlays_of(volume.path())
        if users:
            raise InvalidState(f"base image {image_name!r} is used by {', '.join(users)}")
        self._delete_volume(image_name + BASE_SUFFIX)

    # -- a VM's volumes ---------------------------------------------------

    def create_disk(
        self, vm_name: str, image_name: str, size_gib: int, *, template_name: str | None = None
    ) -> str:
        """The VM's disk: a qcow2 overlay on the base volume (or on the frozen
        disk of ``template_name``), ``size_gib`` large.

        Nothing of the base is copied; the guest's writes land in the overlay.
        Returns the disk's path.
        """
        require_domain_name("name", vm_name)
        _require_image_name(image_name)
        if template_name is None:
            backing_name = image_name + BASE_SUFFIX
        else:
            backing_name = self._vm_volume_names(template_name, TEMPLATE_DISK_SUFFIX)[0]
        return self._create_overlay(
            self._vm_volume_name(vm_name, DISK_SUFFIX), backing_name, size_gib
        )

    def create_template_disk(self, template_name: str, image_name: str, size_gib: int) -> str:
        """A template's disk over the base; frozen once its memory state is saved."""
        _require_image_name(image_name)
        name = self._vm_volume_names(template_name, TEMPLATE_DISK_SUFFIX)[0]
        return self._create_overlay(name, image_name + BASE_SUFFIX, size_gib)

    def _create_overlay(self, name: str, backing_name: str, size_gib: int) -> str:
        require_int("size_gib", size_gib, 1, MAX_DISK_GIB)
        base = self._volume(backing_name)
        if base is None:
            raise NotFound(f"backing volume {backing_name!r} is not there")
        with libvirt_errors():
            base_capacity = base.info()[1]
            capacity = size_gib * GIB
            if capacity < base_capacity:
                raise InvalidSpec(
                    "size_gib", f"must be at least the image's {-(-base_capacity // GIB)} GiB"
                )
            volume = self._volume(name)
            if volume is None:
                overlay = VolumeConfig(name, capacity, "qcow2", backing_path=base.path())
                volume = self._pool().createXML(overlay.to_xml(), 0)
            elif volume.info()[1] < capacity:
                volume.resize(capacity, 0)
            return volume.path()

    def write_seed(self, vm_name: str, seed_iso: bytes) -> str:
        """Store the NoCloud seed as a raw volume (rewritten on every call); its path."""
        return self._write_raw(self._vm_volume_name(vm_name, SEED_SUFFIX), seed_iso)

    def write_template_seed(self, template_name: str, seed_iso: bytes) -> str:
        name = self._vm_volume_names(template_name, TEMPLATE_SEED_SUFFIX)[0]
        return self._write_raw(name, seed_iso)

    def _write_raw(self, name: str, seed_iso: bytes) -> str:
        with libvirt_errors():
            volume = self._volume(name)
            if volume is not None:
                volume.delete(0)
            volume = self._pool().createXML(VolumeConfig(name, 0, "raw").to_xml(), 0)
            self._upload(volume, io.BytesIO(seed_iso).read, len(seed_iso))
            return volume.path()

    def delete_vm_volumes(self, vm_name: str) -> None:
        """Remove the VM's disk, seed (marked or not) and console log, where present."""
        for suffix in (DISK_SUFFIX, SEED_SUFFIX):
            for name in set(self._vm_volume_names(vm_name, suffix)):
                self._delete_volume(name)
        self._delete_volume(vm_name + CONSOLE_SUFFIX, self.console_pool_name)

    def delete_template_volumes(self, template_name: str) -> None:
        """Remove a template's disk and seed; refused while a VM disk is backed by it."""
        disk_name = self._vm_volume_names(template_name, TEMPLATE_DISK_SUFFIX)[0]
        volume = self._volume(disk_name)
        if volume is not None:
            with libvirt_errors():
                users = self._overlays_of(volume.path())
            if users:
                raise InvalidState(f"template {template_name!r} is used by {', '.join(users)}")
        for suffix in (TEMPLATE_DISK_SUFFIX, TEMPLATE_SEED_SUFFIX):
            self._delete_volume(self._vm_volume_names(template_name, suffix)[0])
        self._delete_volume(template_name + CONSOLE_SUFFIX, self.console_pool_name)

    def volume_allocation(self, path: str) -> int:
        """Bytes a volume of this pool takes on disk (0 when it is gone)."""
        volume = self._volume(os.path.basename(path))
        if volume is None:
            return 0
        with libvirt_errors():
            return volume.info()[2]

    def list_volumes(self) -> list[StrataVolume]:
        """Every volume in Strata's pool, classified by name (for orphan detection)."""
        pool = self._pool()
        with libvirt_errors():
            refresh_pool(pool)
            return sorted(
                (_describe(volume) for volume in pool.listAllVolumes(0)),
                key=lambda volume: volume.name,
            )

    def _delete_volume(self, name: str, pool_name: str | None = None) -> None:
        with libvirt_errors():
            if pool_name == self.console_pool_name:
                # virtlogd, not libvirt's storage API, made the log: the pool
                # knows it only after a refresh.
                refresh_pool(self._pool(pool_name))
            volume = self._volume(name, pool_name)
            if volume is None:
                return
            try:
                volume.delete(0)
            except libvirt.libvirtError as error:
                if error.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                    raise
