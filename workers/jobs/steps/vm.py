"""Provisioning, destroying and operating one VM, as named idempotent steps.

Every step re-reads the VM and asks the hypervisor what already exists, so a
job redelivered after a crash repeats at most the step it was in.
"""

import time
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from cloud.models import PortForward, VirtualMachine, VMState
from workers.drivers.guest import (
    CommandTimeout,
    Endpoint,
    GuestIdentity,
    HostKeyMismatch,
    RemoteError,
    SSHUnreachable,
    load_private_key,
    reidentify,
    wait_for_ssh,
)
from workers.drivers.hypervisor import (
    DomainState,
    Hypervisor,
    HypervisorError,
    SeedConfig,
    SshKeyPair,
    build_seed_iso,
    generate_ed25519_keypair,
)
from workers.drivers.hypervisor.spec import SSH_GUEST_PORT
from workers.jobs.adapters import (
    connect,
    domain_spec,
    endpoint,
    forward_port,
    hypervisor,
    ssh_port,
)
from workers.jobs.engine import Plan, Step, StepContext, UserError, register
from workers.jobs.keys import manager_keypair
from workers.jobs.steps import segment
from workers.jobs.templates import base_volume_name, fresh_template, mark_stale

CONSOLE_TAIL_LINES = 15


def vm_of(ctx: StepContext) -> VirtualMachine:
    return VirtualMachine.objects.select_related("host", "flavor", "image", "environment").get(
        pk=ctx.job.vm_id
    )


def console_tail(hv: Hypervisor, vm: VirtualMachine) -> str:
    path = Path(hv.storage.console_log_path(vm.domain_name))
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no console output)"
    return "\n".join(lines[-CONSOLE_TAIL_LINES:])


# --- provision ----------------------------------------------------------------


def reserve(ctx: StepContext) -> None:
    """Pick the loopback port for SSH and the guest's host key, once."""
    vm = vm_of(ctx)
    if vm.state == VMState.SCHEDULED:
        vm.move_to(VMState.PROVISIONING)
    if ssh_port(vm) is None:
        forward_port(vm, SSH_GUEST_PORT)
    if not vm.host_key_public:
        pair = generate_ed25519_keypair(f"strata-{vm.uuid}")
        vm.host_key_public, vm.host_key_private = pair.public_openssh, pair.private_openssh
        vm.save(update_fields=["host_key_public", "host_key_private", "updated_at"])
    ctx.log(f"ssh forward 127.0.0.1:{ssh_port(vm)} -> guest :22; host key pinned")


def choose_path(ctx: StepContext) -> None:
    """From a template when a fresh one exists, else a cold boot; chosen once."""
    vm = vm_of(ctx)
    if vm.template_id is not None:
        ctx.log(f"template path: restoring from {vm.template.name} (chosen before)")
        return
    template, why = fresh_template(vm)
    if template is None:
        ctx.log(f"cold path: {why}")
        return
    VirtualMachine.objects.filter(pk=vm.pk).update(template=template)
    ctx.log(f"template path: {why}")


def create_disk(ctx: StepContext) -> None:
    vm = vm_of(ctx)
    base = base_volume_name(vm.image)
    with hypervisor(vm) as hv:
        hv.storage.ensure_pools()
        hv.storage.import_base_image(base, vm.image.path)
        if vm.template_id is not None:
            path = hv.storage.create_disk(
                vm.domain_name, base, vm.flavor.disk_gb, template_name=vm.template.name
            )
            ctx.log(f"disk {path}: copy-on-write over template {vm.template.name}'s frozen disk")
            return
        path = hv.storage.create_disk(vm.domain_name, base, vm.flavor.disk_gb)
    ctx.log(f"disk {path}: copy-on-write over {base}, {vm.flavor.disk_gb} GiB")


def write_seed(ctx: StepContext) -> None:
    vm = vm_of(ctx)
    if vm.template_id is not None:
        ctx.log("no seed of its own: the template's is attached, cloud-init ran in the template")
        return
    seed = SeedConfig(
        instance_id=str(vm.uuid),
        hostname=vm.name,
        authorized_keys=(manager_keypair().public_openssh,),
        host_key=SshKeyPair(vm.host_key_private, vm.host_key_public),
    ).validate()
    with hypervisor(vm) as hv:
        path = hv.storage.write_seed(vm.domain_name, build_seed_iso(seed))
    ctx.log(f"cloud-init seed {path}")


def define(ctx: StepContext) -> None:
    vm = vm_of(ctx)
    with hypervisor(vm) as hv:
        hv.guests.define(domain_spec(vm, hv))
    ctx.log(f"domain {vm.domain_name} defined ({vm.host.virt_type})")


def start(ctx: StepContext) -> None:
    vm = vm_of(ctx)
    with hypervisor(vm) as hv:
        if vm.template_id is None:
            hv.guests.start(str(vm.uuid))
            ctx.log("started (cold boot)")
        elif hv.guests.state(str(vm.uuid)) is DomainState.RUNNING:
            ctx.log("restored already (a re-run)")
        else:
            restore_or_boot_cold(ctx, vm, hv)
    VirtualMachine.objects.filter(pk=vm.pk).update(started_at=timezone.now())


def restore_or_boot_cold(ctx: StepContext, vm: VirtualMachine, hv: Hypervisor) -> None:
    """Restore the VM from its template; when that fails, the template is
    marked stale and the VM is made again from the base image and cold-booted."""
    template = vm.template
    try:
        hv.templates.restore(template.name, domain_spec(vm, hv), settings.STRATA_INSTALLATION_ID)
    except HypervisorError as exc:
        if exc.transient:  # libvirtd went away: the step is retried, the template is fine
            raise
        reason = f"restore from {template.name} failed: {exc}"
        mark_stale(template, reason)
        ctx.log(f"{reason}; template marked stale; falling back to the cold path")
        hv.guests.destroy(vm.domain_name, str(vm.uuid))
        VirtualMachine.objects.filter(pk=vm.pk).update(template=None)
        create_disk(ctx)
        write_seed(ctx)
        define(ctx)
        hv.guests.start(str(vm.uuid))
        ctx.log("started (cold boot, after the failed restore)")
        return
    ctx.log(f"restored from template {template.name}'s memory state")


def reidentify_guest(ctx: StepContext) -> None:
    """Give a restored guest its own identity, over the one connection that
    pins the template's host key; from then on only the VM's own key is accepted."""
    vm = vm_of(ctx)
    if vm.template_id is None:
        ctx.log("cold boot: the guest got its identity from its own seed")
        return
    key = load_private_key(manager_keypair().private_openssh)
    template_endpoint = Endpoint("127.0.0.1", ssh_port(vm), "root", vm.template.host_key_public)
    try:
        connection = wait_for_ssh(template_endpoint, key, timeout=settings.STRATA_SSH_READY_SECONDS)
    except HostKeyMismatch:
        # A re-run after the keys were replaced: the guest presents the VM's own key.
        connection = wait_for_ssh(endpoint(vm), key, timeout=settings.STRATA_SSH_READY_SECONDS)
    except SSHUnreachable as exc:
        raise UserError(f"no SSH in the restored guest: {exc}") from exc
    identity = GuestIdentity(
        hostname=vm.name,
        machine_id=vm.uuid.hex,
        host_key_private=vm.host_key_private,
        host_key_public=vm.host_key_public,
        renew_engine_id=settings.STRATA_TEMPLATE_RENEW_ENGINE_ID,
    )
    try:
        reidentify(connection, identity)
    except RemoteError as exc:
        raise UserError(f"re-identity failed: {exc}") from exc
    finally:
        connection.close()
    engine = "renewed" if identity.renew_engine_id else "kept the template's (setting)"
    ctx.log(
        "own SSH host key, machine-id and hostname; RNG reseeded from the manager, "
        f"new VM generation id, Docker engine id {engine}, clock set from the manager "
        "(boot id stays the template's until a reboot)"
    )


def wait_ssh(ctx: StepContext) -> None:
    vm = vm_of(ctx)
    port = ssh_port(vm)
    key = load_private_key(manager_keypair().private_openssh)
    try:
        wait_for_ssh(endpoint(vm), key, timeout=settings.STRATA_SSH_READY_SECONDS).close()
    except SSHUnreachable as exc:
        # Not transient here: a guest that did not come up in the bounded time
        # fails this step with what its console said last.
        with hypervisor(vm) as hv:
            console = console_tail(hv, vm)
        raise UserError(
            f"no SSH on 127.0.0.1:{port} after {settings.STRATA_SSH_READY_SECONDS} s "
            f"({exc}); console:\n{console}"
        ) from exc
    VirtualMachine.objects.filter(pk=vm.pk).update(ssh_host="127.0.0.1", ssh_port=port)
    ctx.log(f"ssh ready on 127.0.0.1:{port}, host key matches the pinned one")


def check_docker(ctx: StepContext) -> None:
    vm = vm_of(ctx)
    deadline = time.monotonic() + settings.STRATA_DOCKER_READY_SECONDS
    while True:
        try:
            result = connect(vm).run(
                ["docker", "info", "--format", "{{.ServerVersion}}"], timeout=30, check=False
            )
        except CommandTimeout as exc:
            # A client that reached dockerd's socket while dockerd (re)starts waits on it.
            output, answered = str(exc), False
        else:
            output = (result.stdout + result.stderr).decode(errors="replace").strip()
            answered = result.exit_status == 0
        if answered:
            break
        if time.monotonic() > deadline:
            raise UserError(f"docker is not answering in the guest: {output[-500:]}")
        time.sleep(2)
    if vm.state != VMState.RUNNING:  # a re-run after a crash past this point
        vm.move_to(VMState.RUNNING, error="")
    ctx.log(f"docker {output} answering; VM running")


def undo_provision(ctx: StepContext) -> None:
    vm = vm_of(ctx)
    with hypervisor(vm) as hv:
        hv.guests.destroy(vm.domain_name, str(vm.uuid))
    PortForward.objects.filter(vm=vm).delete()
    if vm.state != VMState.ERROR:
        vm.move_to(VMState.ERROR, error=ctx.job.error or "provisioning failed")
    ctx.log("domain, disk, seed, console log and port forwards removed")
    segment.undo_segment(ctx)


def discard_provision(job, reason: str) -> None:
    """A provisioning cancelled before it started made nothing on the host."""
    vm = VirtualMachine.objects.filter(pk=job.vm_id, state=VMState.SCHEDULED).first()
    if vm is not None:
        vm.move_to(VMState.ERROR, error=reason)


register(
    Plan(
        "provision_vm",
        (
            Step("reserve", reserve),
            Step("choose path", choose_path),
            Step("create disk", create_disk),
            Step("write seed", write_seed),
            Step("ensure network", segment.ensure_network),
            Step("define", define),
            Step("start", start),
            Step("re-identity", reidentify_guest),
            Step("wait for ssh", wait_ssh),
            Step("check docker", check_docker),
        ),
        compensate=undo_provision,
        discard=discard_provision,
    )
)


# --- destroy ------------------------------------------------------------------


def destroy_domain(ctx: StepContext) -> None:
    vm = vm_of(ctx)
    if vm.state not in (VMState.DELETING, VMState.DELETED):
        vm.move_to(VMState.DELETING)
    with hypervisor(vm) as hv:
        hv.guests.destroy(vm.domain_name, str(vm.uuid))
    ctx.log("domain undefined; disk, seed and console log deleted")


def release(ctx: StepContext) -> None:
    vm = vm_of(ctx)
    PortForward.objects.filter(vm=vm).delete()
    vm.containers.all().delete()
    if vm.state != VMState.DELETED:
        vm.move_to(VMState.DELETED)
    ctx.log("port forwards released; quota freed")


register(
    Plan(
        "destroy_vm",
        (
            Step("destroy domain", destroy_domain),
            Step("remove records", segment.remove_records),
            Step("release", release),
            Step("remove network", segment.remove_network),
        ),
    )
)
