"""Creating a VM: Strata's hypervisor driver against `virt-install --import`.

For the same Debian guest image, in one run and one guest at a time (two
guests on 2 cores would each run at half speed):

- control plane: create disk + write seed + define + start, median of a few
  runs (each VM is destroyed right after start, before it boots);
- start to SSH-ready (pinned host key) and to `docker info`, one full boot;
- `virt-install --import` of the same image with the same seed and kernel:
  the full image copy it needs, its own define + start, and start to SSH;
- copy-on-write overlay creation on a small and a large base image, against
  a full copy of the large one.

Run as root with libvirtd up and the image built (workers.drivers.images):
    .venv/bin/python bench/vm_create.py [--quick]

- Strata from template: one cold boot saved with its memory state, then VMs
  restored from it (overlay + restore + re-identity), API call to SSH on the
  VM's own pinned key and to `docker info`, median of a few.

--quick (run by make test so the bench cannot rot): one control-plane run,
one Strata boot to Docker, virt-install's define + start without its boot,
one template and one VM from it.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness.storage_cleanup import remove_pools  # noqa: E402 - needs the path above
from workers.drivers.guest import (  # noqa: E402
    Endpoint,
    GuestIdentity,
    load_private_key,
    reidentify,
    wait_for_ssh,
)
from workers.drivers.hypervisor import (  # noqa: E402
    DomainSpec,
    Hypervisor,
    KernelBoot,
    SeedConfig,
    UserNetwork,
    build_seed_iso,
    find_free_loopback_ports,
    generate_ed25519_keypair,
)
from workers.drivers.hypervisor.config import user_netdev_argument  # noqa: E402
from workers.drivers.images import build_debian_image  # noqa: E402

URI = "qemu:///system"
BENCH_ROOT = Path("/var/lib/strata-test")
VCPUS = 2
MEMORY_MIB = 1024
DISK_GIB = 4
BOOT_TIMEOUT = 600.0


class Timer:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self._last
        self._last = now


class Bench:
    def __init__(self, work_dir: Path, image) -> None:
        self.work_dir = work_dir
        self.image = image
        self.image_name = f"debian-12-{image.recipe_hash[:16]}"
        self.hypervisor = Hypervisor(URI, work_dir / "data", pool_name=f"strata-{work_dir.name}")
        self.manager_key = generate_ed25519_keypair("strata-bench")

    def close(self) -> None:
        for domain in self.hypervisor.guests.list():
            if domain.metadata.environment_id == "bench":
                self.hypervisor.guests.destroy(domain.name, domain.uuid)
        remove_pools(self.hypervisor)
        self.hypervisor.close()

    def kernel_boot(self) -> KernelBoot:
        return KernelBoot(
            str(self.image.kernel_path), str(self.image.initrd_path), self.image.kernel_cmdline
        )

    def seed(self, name: str, host_key) -> bytes:
        return build_seed_iso(
            SeedConfig(
                instance_id=str(uuid.uuid4()),
                hostname=name,
                authorized_keys=(self.manager_key.public_openssh,),
                host_key=host_key,
            )
        )

    def domain_spec(self, name: str, vm_uuid: str, disk: str, seed_path: str, port: int):
        return DomainSpec(
            name=name,
            uuid=vm_uuid,
            vm_id=name,
            environment_id="bench",
            vcpus=VCPUS,
            memory_mib=MEMORY_MIB,
            disk_path=disk,
            seed_path=seed_path,
            console_log_path=self.hypervisor.storage.console_log_path(name),
            network=UserNetwork(ssh_host_port=port),
            kernel_boot=self.kernel_boot(),
        )

    def create_with_strata(self, name: str):
        """The provision steps a job runs, timed; returns (uuid, port, host key, timer)."""
        hv = self.hypervisor
        vm_uuid = str(uuid.uuid4())
        timer = Timer()
        host_key = generate_ed25519_keypair()
        (port,) = find_free_loopback_ports(1)
        seed = self.seed(name, host_key)
        timer.lap("keys + seed ISO")
        disk = hv.storage.create_disk(name, self.image_name, DISK_GIB)
        timer.lap("disk overlay")
        seed_path = hv.storage.write_seed(name, seed)
        timer.lap("seed volume")
        hv.guests.define(self.domain_spec(name, vm_uuid, disk, seed_path, port))
        timer.lap("define")
        hv.guests.start(vm_uuid)
        timer.lap("start")
        return vm_uuid, port, host_key, timer

    def control_plane(self, runs: int) -> dict[str, float]:
        laps: dict[str, list[float]] = {}
        for run in range(runs):
            name = f"bench-cp-{run}"
            vm_uuid, _port, _key, timer = self.create_with_strata(name)
            self.hypervisor.guests.destroy(name, vm_uuid)
            for lap, seconds in timer.laps.items():
                laps.setdefault(lap, []).append(seconds)
        medians = {lap: statistics.median(values) for lap, values in laps.items()}
        medians["total"] = statistics.median(
            sum(values[i] for values in laps.values()) for i in range(runs)
        )
        return medians

    def ssh_ready(self, port: int, host_key) -> tuple[float, float]:
        started = time.perf_counter()
        connection = wait_for_ssh(
            Endpoint("127.0.0.1", port, "root", host_key.public_openssh),
            load_private_key(self.manager_key.private_openssh),
            timeout=BOOT_TIMEOUT,
        )
        ssh_seconds = time.perf_counter() - started
        try:
            # Docker may still be starting when sshd answers: poll until it does.
            deadline = time.monotonic() + BOOT_TIMEOUT
            while connection.run(["docker", "info"], timeout=60, check=False).exit_status:
                if time.monotonic() > deadline:
                    raise TimeoutError("docker did not answer in the guest")
                time.sleep(0.5)
        finally:
            connection.close()
        return ssh_seconds, time.perf_counter() - started

    def strata_boot(self) -> dict[str, float]:
        name = "bench-boot"
        vm_uuid, port, host_key, timer = self.create_with_strata(name)
        ssh_seconds, docker_seconds = self.ssh_ready(port, host_key)
        self.hypervisor.guests.shutdown(vm_uuid, timeout=60)
        self.hypervisor.guests.destroy(name, vm_uuid)
        return {
            "control plane": sum(timer.laps.values()),
            "start -> ssh": ssh_seconds,
            "start -> docker info": docker_seconds,
        }

    def template_boots(self, vms: int) -> dict[str, float]:
        """Build one template (a cold boot to Docker, saved), then ``vms`` VMs from it."""
        hv = self.hypervisor
        template, template_uuid = "bench-template", str(uuid.uuid4())
        template_key = generate_ed25519_keypair()
        (port,) = find_free_loopback_ports(1)
        started = time.perf_counter()
        disk = hv.storage.create_template_disk(template, self.image_name, DISK_GIB)
        seed_path = hv.storage.write_template_seed(template, self.seed(template, template_key))
        hv.guests.define(self.domain_spec(template, template_uuid, disk, seed_path, port))
        hv.guests.start(template_uuid)
        self.ssh_ready(port, template_key)
        state_bytes = hv.templates.save(template, template_uuid)
        result = {"template: cold boot to docker + save": time.perf_counter() - started}
        disks = []
        try:
            for renew, label in ((True, ""), (False, ", engine id kept")):
                to_ssh, to_docker = [], []
                for run in range(vms):
                    ssh_seconds, docker_seconds, disk_bytes = self.from_template(
                        template, template_key, seed_path, f"bench-from-template-{run}", renew
                    )
                    to_ssh.append(ssh_seconds)
                    to_docker.append(docker_seconds)
                    disks.append(disk_bytes)
                result[f"from template{label}: create -> ssh (new key), median"] = (
                    statistics.median(to_ssh)
                )
                result[f"from template{label}: create -> docker info, median"] = statistics.median(
                    to_docker
                )
        finally:
            hv.templates.delete(template)
        print(
            f"\ntemplate memory state {state_bytes / 2**20:.0f} MiB; "
            f"extra disk per VM after docker answers {statistics.median(disks) / 2**20:.1f} MiB"
        )
        return result

    def from_template(
        self, template: str, template_key, seed_path: str, name: str, renew_engine_id: bool
    ):
        hv = self.hypervisor
        vm_uuid = str(uuid.uuid4())
        host_key = generate_ed25519_keypair()
        (port,) = find_free_loopback_ports(1)
        manager_key = load_private_key(self.manager_key.private_openssh)
        started = time.perf_counter()
        disk = hv.storage.create_disk(name, self.image_name, DISK_GIB, template_name=template)
        spec = self.domain_spec(name, vm_uuid, disk, seed_path, port)
        hv.guests.define(spec)
        try:
            hv.templates.restore(template, spec, None)
            endpoint = Endpoint("127.0.0.1", port, "root", template_key.public_openssh)
            connection = wait_for_ssh(endpoint, manager_key, timeout=60)
            try:
                identity = GuestIdentity(
                    name,
                    uuid.UUID(vm_uuid).hex,
                    host_key.private_openssh,
                    host_key.public_openssh,
                    renew_engine_id,
                )
                reidentify(connection, identity)
            finally:
                connection.close()
            reidentified = time.perf_counter() - started
            ssh_seconds, docker_seconds = self.ssh_ready(port, host_key)
            disk_bytes = hv.storage.volume_allocation(disk)
        finally:
            hv.guests.destroy(name, vm_uuid)
        return reidentified + ssh_seconds, reidentified + docker_seconds, disk_bytes

    def virt_install_boot(self, wait_for_boot: bool = True) -> dict[str, float]:
        name = "bench-virt-install"
        host_key = generate_ed25519_keypair()
        (port,) = find_free_loopback_ports(1)
        vm_dir = self.work_dir / "virt-install"
        vm_dir.mkdir(mode=0o755)
        disk = vm_dir / "disk.qcow2"
        seed = vm_dir / "seed.iso"
        result: dict[str, float] = {}
        started = time.perf_counter()
        # --import boots the given file itself: the image must be copied first.
        shutil.copyfile(self.image.disk_path, disk)
        subprocess.run(["qemu-img", "resize", "-q", str(disk), f"{DISK_GIB}G"], check=True)
        seed.write_bytes(self.seed(name, host_key))
        result["copy image + seed"] = time.perf_counter() - started
        started = time.perf_counter()
        subprocess.run(
            [
                "virt-install",
                f"--connect={URI}",
                f"--name={name}",
                f"--memory={MEMORY_MIB}",
                f"--vcpus={VCPUS}",
                "--virt-type=qemu",
                "--machine=q35",
                "--osinfo=detect=on,require=off",
                "--import",
                f"--disk=path={disk},format=qcow2,bus=virtio",
                f"--disk=path={seed},format=raw,bus=virtio,readonly=on",
                f"--boot=kernel={self.image.kernel_path},initrd={self.image.initrd_path},"
                f"kernel_args={self.image.kernel_cmdline}",
                "--network=none",
                f"--qemu-commandline=-netdev {user_netdev_argument(UserNetwork(port))}",
                "--qemu-commandline=-device virtio-net-pci,netdev=n0,bus=pcie.0,addr=0x10",
                "--graphics=none",
                "--noautoconsole",
            ],
            check=True,
            capture_output=True,
        )
        result["virt-install (define + start)"] = time.perf_counter() - started
        try:
            if wait_for_boot:
                result["start -> ssh"], result["start -> docker info"] = self.ssh_ready(
                    port, host_key
                )
        finally:
            subprocess.run(["virsh", "-c", URI, "destroy", name], capture_output=True)
            subprocess.run(["virsh", "-c", URI, "undefine", name], capture_output=True)
            self.remove_pools_at(vm_dir)
            shutil.rmtree(vm_dir)
        return result

    def remove_pools_at(self, directory: Path) -> None:
        """virt-install defines a pool for every directory it finds a disk in."""
        connection = self.hypervisor.host.connection
        for pool in connection.listAllStoragePools(0):
            if f"<path>{directory}</path>" in pool.XMLDesc(0):
                if pool.isActive():
                    pool.destroy()
                pool.undefine()

    def overlays(self, runs: int) -> dict[str, float]:
        result: dict[str, float] = {}
        for label, data_mib in (("small", 8), ("large", 1024)):
            source = self.work_dir / f"{label}.qcow2"
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", str(source), "2G"], check=True
            )
            subprocess.run(
                ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {data_mib}M", str(source)],
                check=True,
                capture_output=True,
            )
            self.hypervisor.storage.import_base_image(f"bench-{label}", source)
            times = []
            for run in range(runs):
                started = time.perf_counter()
                self.hypervisor.storage.create_disk(f"bench-{label}-{run}", f"bench-{label}", 2)
                times.append(time.perf_counter() - started)
            result[f"overlay on {data_mib} MiB base"] = statistics.median(times)
            if label == "large":
                started = time.perf_counter()
                shutil.copyfile(source, self.work_dir / "full-copy.qcow2")
                result[f"full copy of {data_mib} MiB base"] = time.perf_counter() - started
        return result


def print_table(title: str, rows: dict[str, float]) -> None:
    print(f"\n{title}")
    width = max(len(name) for name in rows)
    for name, seconds in rows.items():
        print(
            f"  {name:<{width}}  {seconds * 1000:9.1f} ms"
            if seconds < 1
            else f"  {name:<{width}}  {seconds:9.2f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="control-plane runs (median)")
    parser.add_argument("--image-data-dir", default="/var/lib/strata", type=Path)
    parser.add_argument("--no-boot", action="store_true", help="skip both full boots")
    parser.add_argument("--quick", action="store_true", help="one run of each, one boot")
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs

    image = build_debian_image(args.image_data_dir)
    BENCH_ROOT.mkdir(mode=0o755, exist_ok=True)
    work_dir = BENCH_ROOT / f"bench-{uuid.uuid4().hex[:8]}"
    work_dir.mkdir(mode=0o755)
    bench = Bench(work_dir, image)
    try:
        bench.hypervisor.storage.ensure_pools()
        started = time.perf_counter()
        bench.hypervisor.storage.import_base_image(bench.image_name, image.disk_path)
        print_table(
            f"image {image.disk_path.name}: {image.size_bytes / 2**20:.0f} MiB file",
            {"import as base volume (once per host)": time.perf_counter() - started},
        )
        print_table(
            f"Strata control plane, median of {runs} (target < 500 ms)",
            bench.control_plane(runs),
        )
        if not args.no_boot:
            print_table("Strata: one full boot (TCG)", bench.strata_boot())
            print_table("Strata from template (TCG)", bench.template_boots(1 if args.quick else 3))
            print_table(
                "virt-install --import" + (": define + start" if args.quick else ": one full boot"),
                bench.virt_install_boot(wait_for_boot=not args.quick),
            )
        print_table(f"copy-on-write overlay, median of {runs}", bench.overlays(runs))
    finally:
        bench.close()
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
