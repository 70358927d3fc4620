"""Build the Debian 12 guest image: debootstrap a root tree, configure it for
Strata, and turn it into a compressed qcow2 whose whole disk is one ext4
filesystem, booted by direct kernel boot with the tree's own kernel and initrd.

Builds are cached under <data_dir>/images/<name>-<recipe hash>/ and published by
one rename, so a directory with that name is always a complete image.
"""

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .apt_mirror import find_debian_mirror
from .checksum import sha256_file
from .errors import ImageBuildError
from .filesystem import fsync_directory, fsync_file, remove_tree, write_file_durably
from .guest_config import ENABLED_UNITS, GUEST_FILES
from .inspection import inspect_image

# Bump whenever the build steps below change what ends up in the image.
BUILDER_VERSION = 1

DEBIAN_12_PACKAGES = (
    "systemd-sysv",
    "udev",
    "dbus",
    "openssh-server",
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "docker.io",
    "cloud-init",
    # debootstrap does not resolve python3-cryptography's virtual dependency on it.
    "python3-cffi-backend",
    "iproute2",
    "ca-certificates",
    "netbase",
    "kmod",
    "iptables",
    "procps",
    "qemu-guest-agent",
    # networkd's DHCP leases carry DNS servers; only resolved puts them to use.
    "systemd-resolved",
    # Owns the published ports in front of the replicas (guest_proxy); Strata
    # starts it over SSH with its own files, so the package's unit is masked.
    "haproxy",
)

# apparmor=0: docker.io wants to load its AppArmor profile, which fails without
# the apparmor package in the guest.
DIRECT_BOOT_CMDLINE = "root=/dev/vda rw console=ttyS0 apparmor=0"

ProgressCallback = Callable[[int, str], None]

MANIFEST = "manifest.json"
DISK = "disk.qcow2"
KERNEL = "vmlinuz"
INITRD = "initrd.img"
BUILD_DIR_PREFIX = ".build-"
OUTPUT_TAIL_LINES = 40


@dataclass(frozen=True)
class DebianRecipe:
    """Everything that decides the image's content; its hash keys the cache.

    The mirror is deliberately not part of it: any mirror of the release serves
    the same packages.
    """

    name: str = "debian-12"
    os: str = "debian-12"
    release: str = "bookworm"
    variant: str = "minbase"
    packages: tuple[str, ...] = DEBIAN_12_PACKAGES
    guest_files: tuple[tuple[str, str], ...] = tuple(sorted(GUEST_FILES.items()))
    enabled_units: tuple[str, ...] = ENABLED_UNITS
    disk_size: str = "3G"
    kernel_cmdline: str = DIRECT_BOOT_CMDLINE
    builder_version: int = BUILDER_VERSION

    def recipe_hash(self) -> str:
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def cache_dir_name(self) -> str:
        return f"{self.name}-{self.recipe_hash()[:16]}"


@dataclass(frozen=True)
class BuiltImage:
    name: str
    os: str
    directory: Path
    disk_path: Path
    kernel_path: Path
    initrd_path: Path
    kernel_cmdline: str
    format: str
    sha256: str
    virtual_size_bytes: int
    size_bytes: int
    recipe_hash: str
    from_cache: bool = field(default=False, compare=False)


def load_cached_image(directory: Path) -> BuiltImage | None:
    """The image published in `directory`, or None when it is not a complete one."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    paths = [directory / DISK, directory / KERNEL, directory / INITRD]
    if not all(path.is_file() for path in paths):
        return None
    try:
        return BuiltImage(
            directory=directory,
            disk_path=paths[0],
            kernel_path=paths[1],
            initrd_path=paths[2],
            from_cache=True,
            **manifest,
        )
    except TypeError:  # a manifest with missing or unknown fields
        return None


class _ProgressReporter:
    """Hands (percent, message) to the caller's callback, never going backwards."""

    def __init__(self, callback: ProgressCallback | None):
        self._callback = callback
        self.percent = 0

    def __call__(self, percent: float, message: str) -> None:
        self.percent = max(self.percent, min(100, int(percent)))
        if self._callback:
            self._callback(self.percent, message)


class DebootstrapProgress:
    """Turns debootstrap's `I:` lines into percentages of the whole build.

    debootstrap announces each package as it validates (after retrieving),
    extracts, unpacks and configures it; the expected counts were measured on a
    real build of this recipe and only shape the bar inside each stage.
    """

    # The percent ranges follow where a build's time goes (measured: 27 s
    # downloading, 3 s extracting, 41 s unpacking and configuring, 8 s after).
    STAGES = (
        # (line pattern, first percent, last percent, expected number of lines)
        (re.compile(r"(Retrieving|Validating) (Release|InRelease|Packages)\b"), 0, 1, 3),
        (re.compile(r"Validating \S+ \S+$"), 1, 34, 215),
        (re.compile(r"Extracting \S+\.\.\.$"), 34, 38, 88),
        # dpkg unpacks and configures the required set, then the rest: one stage.
        (re.compile(r"(Unpacking|Configuring) \S+\.\.\.$"), 38, 89, 400),
        (re.compile(r"Base system installed successfully"), 90, 90, 1),
    )
    END_PERCENT = 90

    def __init__(self, report: Callable[[float, str], None]):
        self._report = report
        self._counts = [0] * len(self.STAGES)

    def feed(self, line: str) -> None:
        if not line.startswith("I: "):
            return
        message = line[3:].strip()
        for index, (pattern, first, last, expected) in enumerate(self.STAGES):
            if pattern.search(message):
                self._counts[index] += 1
                done = min(1.0, self._counts[index] / expected)
                self._report(first + (last - first) * done, message)
                return


def _run_step(args: list[str], what: str) -> None:
    result = subprocess.run(
        args, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip()[-2000:]
        raise ImageBuildError(f"{what} failed (exit {result.returncode}): {tail}")


def run_debootstrap(args: list[str], on_line: Callable[[str], None]) -> None:
    """Run debootstrap, feeding each output line to `on_line`.

    On any exit from here other than success (an error, KeyboardInterrupt, a
    SystemExit from a signal handler) the debootstrap process group is killed so
    nothing keeps writing into the tree the caller is about to delete.
    """
    tail: deque[str] = deque(maxlen=OUTPUT_TAIL_LINES)
    process = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
        env={
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LC_ALL": "C",
            "DEBIAN_FRONTEND": "noninteractive",
        },
    )
    try:
        for line in process.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            on_line(line)
        returncode = process.wait()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        process.stdout.close()
    if returncode != 0:
        raise ImageBuildError(f"debootstrap failed (exit {returncode}):\n" + "\n".join(tail))


def _debootstrap_command(recipe: DebianRecipe, rootfs: Path, mirror: str, cache: Path):
    return [
        "debootstrap",
        f"--variant={recipe.variant}",
        "--components=main",
        f"--include={','.join(recipe.packages)}",
        f"--cache-dir={cache}",
        recipe.release,
        str(rootfs),
        mirror,
    ]


def _only_file(rootfs: Path, pattern: str) -> Path:
    matches = sorted((rootfs / "boot").glob(pattern))
    if len(matches) != 1:
        raise ImageBuildError(f"expected one /boot/{pattern} in the tree, found {matches}")
    return matches[0]


def _configure_rootfs(rootfs: Path, recipe: DebianRecipe) -> None:
    for relative, content in recipe.guest_files:
        target = rootfs / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        target.chmod(0o644)
    # An empty machine-id makes systemd generate a fresh one on each VM's first boot.
    (rootfs / "etc/machine-id").write_text("")
    dbus_machine_id = rootfs / "var/lib/dbus/machine-id"
    if dbus_machine_id.is_file() and not dbus_machine_id.is_symlink():
        dbus_machine_id.unlink()
    # Host keys made during the build would be shared by every VM.
    for host_key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        host_key.unlink()
    # debootstrap copied the build host's resolv.conf; the guest uses resolved's stub.
    resolv_conf = rootfs / "etc/resolv.conf"
    if resolv_conf.exists() or resolv_conf.is_symlink():
        resolv_conf.unlink()
    resolv_conf.symlink_to("../run/systemd/resolve/stub-resolv.conf")
    # systemctl in a chroot only creates the [Install] symlinks; nothing starts.
    _run_step(
        ["chroot", str(rootfs), "systemctl", "enable", *recipe.enabled_units],
        "enabling units",
    )
    for cache_glob in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin"):
        for cached in rootfs.glob(cache_glob):
            cached.unlink()
    lists = rootfs / "var/lib/apt/lists"
    for entry in lists.glob("*") if lists.is_dir() else ():
        if entry.is_file() and entry.name != "lock":
            entry.unlink()


def _build_into(
    work_dir: Path,
    recipe: DebianRecipe,
    mirror: str,
    deb_cache: Path,
    report: _ProgressReporter,
) -> None:
    """Build the image files and manifest into `work_dir`."""
    rootfs = work_dir / "rootfs"
    report(0, f"debootstrap {recipe.release} from {mirror}")
    run_debootstrap(
        _debootstrap_command(recipe, rootfs, mirror, deb_cache),
        DebootstrapProgress(report).feed,
    )

    report(DebootstrapProgress.END_PERCENT, "configuring the root tree")
    _configure_rootfs(rootfs, recipe)
    shutil.copyfile(_only_file(rootfs, "vmlinuz-*"), work_dir / KERNEL)
    shutil.copyfile(_only_file(rootfs, "initrd.img-*"), work_dir / INITRD)

    raw_disk = work_dir / "disk.raw"
    report(91, f"making a {recipe.disk_size} ext4 filesystem from the tree")
    _run_step(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            "strata-root",
            "-d",
            str(rootfs),
            str(raw_disk),
            recipe.disk_size,
        ],
        "mkfs.ext4",
    )
    remove_tree(rootfs)

    disk = work_dir / DISK
    report(95, "converting to compressed qcow2")
    _run_step(
        [
            "qemu-img",
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-c",
            "-o",
            "compression_type=zstd",
            str(raw_disk),
            str(disk),
        ],
        "qemu-img convert",
    )
    raw_disk.unlink()

    report(99, "checksumming and inspecting the disk")
    info = inspect_image(disk, expected_format="qcow2")
    manifest = {
        "name": recipe.name,
        "os": recipe.os,
        "format": "qcow2",
        "kernel_cmdline": recipe.kernel_cmdline,
        "sha256": sha256_file(disk),
        "virtual_size_bytes": info.virtual_size_bytes,
        "size_bytes": info.file_size_bytes,
        "recipe_hash": recipe.recipe_hash(),
    }
    # The manifest marks the directory complete, so the files it describes must be
    # on disk before it is.
    for published in (disk, work_dir / KERNEL, work_dir / INITRD):
        fsync_file(published)
    write_file_durably(work_dir / MANIFEST, json.dumps(manifest, indent=2).encode())


@contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _remove_abandoned_builds(images_dir: Path, cache_dir_name: str) -> None:
    """Temp trees of this recipe left by a build that was killed outright.  Only
    called under the recipe's lock, so none of them belongs to a live build."""
    for abandoned in images_dir.glob(f"{BUILD_DIR_PREFIX}{cache_dir_name}-*"):
        remove_tree(abandoned)


def build_debian_image(
    data_dir: Path,
    progress: ProgressCallback | None = None,
    *,
    recipe: DebianRecipe = DebianRecipe(),
    mirror: str | None = None,
) -> BuiltImage:
    """Build the guest image described by `recipe`, or return the cached one.

    `progress(percent, message)` is called as the build advances.  `mirror`
    defaults to the one the host's apt sources name for the release.
    """
    report = _ProgressReporter(progress)
    images_dir = Path(data_dir) / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    final_dir = images_dir / recipe.cache_dir_name()

    with _exclusive_lock(images_dir / f".{final_dir.name}.lock"):
        cached = load_cached_image(final_dir)
        if cached:
            report(100, f"cached image {final_dir}")
            return cached
        _remove_abandoned_builds(images_dir, final_dir.name)
        if final_dir.exists():
            # Never renamed into place by us, so not a finished build: start over.
            remove_tree(final_dir)

        deb_cache = Path(data_dir) / "cache" / "debs"
        deb_cache.mkdir(parents=True, exist_ok=True)
        work_dir = Path(
            tempfile.mkdtemp(prefix=f"{BUILD_DIR_PREFIX}{final_dir.name}-", dir=images_dir)
        )
        try:
            _build_into(
                work_dir,
                recipe,
                mirror or find_debian_mirror(recipe.release),
                deb_cache,
                report,
            )
            work_dir.chmod(0o755)
            os.rename(work_dir, final_dir)
        except BaseException:
            remove_tree(work_dir)
            raise
        fsync_directory(images_dir)

    image = load_cached_image(final_dir)
    if image is None:
        raise ImageBuildError(f"{final_dir} is incomplete right after the build")
    report(100, f"built {final_dir}")
    return replace(image, from_cache=False)
