"""Operations on one existing VM, each a short plan on the VM's host queue.

Every state write happens under the VM's row lock, the same lock the
reconciler takes before it restarts a VM, so the two never act on one VM at
once.  A failed or cancelled operation leaves the VM's state matching what
libvirt reports (``settle_from_domain``).
"""

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from cloud.models import Flavor, VirtualMachine, VMState
from workers.drivers.hypervisor import DomainState, Hypervisor, NotFound
from workers.jobs.adapters import domain_spec, hypervisor
from workers.jobs.engine import Plan, Step, StepContext, register
from workers.jobs.steps.vm import vm_of

# The VM state that matches a domain's state; others (paused, crashed) leave it alone.
STATE_OF_DOMAIN = {DomainState.RUNNING: VMState.RUNNING, DomainState.SHUTOFF: VMState.STOPPED}


def record_state(vm: VirtualMachine, state: str, **fields) -> None:
    """Move the VM to ``state`` under its row lock (a no-op when it is there already)."""
    with transaction.atomic():
        locked = VirtualMachine.objects.select_for_update().get(pk=vm.pk)
        if locked.state != state:
            locked.move_to(state, **fields)
        elif fields:
            VirtualMachine.objects.filter(pk=vm.pk).update(**fields)
    vm.state = state


def _settle_to_domain(vm: VirtualMachine, hv: Hypervisor) -> str | None:
    """Make the VM's recorded state what libvirt reports; returns that state."""
    try:
        state = STATE_OF_DOMAIN.get(hv.guests.state(str(vm.uuid)))
    except NotFound:
        return None  # the reconciler marks it lost
    if state is not None:
        record_state(vm, state)
    return state


def start_vm(ctx: StepContext) -> None:
    vm = vm_of(ctx)
    with hypervisor(vm) as hv:
        hv.guests.start(str(vm.uuid))
    record_state(vm, VMState.RUNNING, started_at=timezone.now())
    ctx.log("running")


def stop_vm(ctx: StepContext) -> None:
    vm = vm_of(ctx)
    if vm.state == VMState.RUNNING:
        # Written before the shutdown: from here on the VM is not "running".
        record_state(vm, VMState.STOPPING)
    with hypervisor(vm) as hv:
        graceful = hv.guests.shutdown(str(vm.uuid), timeout=settings.STRATA_SHUTDOWN_SECONDS)
    record_state(vm, VMState.STOPPED)
    ctx.log("shut down" if graceful else "did not shut down in time: forced off")


def reboot_vm(ctx: StepContext) -> None:
    vm = vm_of(ctx)
    with hypervisor(vm) as hv:
        hv.guests.reboot(str(vm.uuid))
    ctx.log("reboot requested")


def snapshot_vm(ctx: StepContext) -> None:
    vm, name = vm_of(ctx), ctx.job.params["snapshot"]
    with hypervisor(vm) as hv:
        hv.snapshots.create(str(vm.uuid), name)
    ctx.log(f"snapshot {name} taken")


def revert_vm(ctx: StepContext) -> None:
    vm, name = vm_of(ctx), ctx.job.params["snapshot"]
    with hypervisor(vm) as hv:
        hv.snapshots.revert(str(vm.uuid), name)
        # A snapshot of a stopped VM leaves the domain shut off, one of a running
        # VM leaves it running, whatever the VM was before.
        state = _settle_to_domain(vm, hv)
    ctx.log(f"reverted to snapshot {name}; the VM is {state or 'in an unknown state'}")


def delete_snapshot(ctx: StepContext) -> None:
    vm, name = vm_of(ctx), ctx.job.params["snapshot"]
    with hypervisor(vm) as hv:
        hv.snapshots.delete(str(vm.uuid), name)
    ctx.log(f"snapshot {name} deleted")


def resize_vm(ctx: StepContext) -> None:
    vm = vm_of(ctx)
    flavor = Flavor.objects.get(name=ctx.job.params["flavor"])
    with hypervisor(vm) as hv:
        hv.guests.resize(domain_spec(vm, hv), vcpus=flavor.vcpus, memory_mib=flavor.memory_mb)
    VirtualMachine.objects.filter(pk=vm.pk).update(flavor=flavor)
    ctx.log(f"now {flavor}")


def settle_from_domain(ctx: StepContext) -> None:
    """After a failed or cancelled operation, record the state the domain really has."""
    vm = vm_of(ctx)
    if vm.state not in (VMState.RUNNING, VMState.STOPPING, VMState.STOPPED):
        return  # error, lost, deleting: not this operation's to change
    with hypervisor(vm) as hv:
        state = _settle_to_domain(vm, hv)
    ctx.log(f"the VM is {state or 'in an unknown state'}")


OPERATIONS = {
    "start": start_vm,
    "stop": stop_vm,
    "reboot": reboot_vm,
    "snapshot": snapshot_vm,
    "revert": revert_vm,
    "delete_snapshot": delete_snapshot,
    "resize": resize_vm,
}
for action, run in OPERATIONS.items():
    register(
        Plan(
            f"vm_{action}",
            (Step(action.replace("_", " "), run),),
            compensate=settle_from_domain,
        )
    )
