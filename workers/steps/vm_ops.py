"""Operations on one existing VM, each a short plan on the VM's host queue."""

from django.conf import settings
from django.utils import timezone

from cloud.models import Flavor, VirtualMachine, VMState
from workers.jobs import Plan, Step, StepContext, register
from workers.steps.vm import hypervisor, vm_of


def _settle(vm: VirtualMachine, state: str) -> None:
    if vm.state != state:
        vm.move_to(state)


def start_vm(ctx: StepContext) -> None:
    vm = vm_of(ctx)
    with hypervisor(vm) as hv:
        hv.start(str(vm.uuid))
    VirtualMachine.objects.filter(pk=vm.pk).update(started_at=timezone.now())
    _settle(vm, VMState.RUNNING)
    ctx.log("running")


def stop_vm(ctx: StepContext) -> None:
    vm = vm_of(ctx)
    with hypervisor(vm) as hv:
        graceful = hv.shutdown(str(vm.uuid), timeout=settings.STRATA_SHUTDOWN_SECONDS)
    _settle(vm, VMState.STOPPED)
    ctx.log("shut down" if graceful else "did not shut down in time: forced off")


def reboot_vm(ctx: StepContext) -> None:
    vm = vm_of(ctx)
    with hypervisor(vm) as hv:
        hv.reboot(str(vm.uuid))
    ctx.log("reboot requested")


def snapshot_vm(ctx: StepContext) -> None:
    vm, name = vm_of(ctx), ctx.job.params["snapshot"]
    with hypervisor(vm) as hv:
        hv.create_snapshot(str(vm.uuid), name)
    ctx.log(f"snapshot {name} taken")


def revert_vm(ctx: StepContext) -> None:
    vm, name = vm_of(ctx), ctx.job.params["snapshot"]
    with hypervisor(vm) as hv:
        hv.revert_snapshot(str(vm.uuid), name)
    ctx.log(f"reverted to snapshot {name}")


def delete_snapshot(ctx: StepContext) -> None:
    vm, name = vm_of(ctx), ctx.job.params["snapshot"]
    with hypervisor(vm) as hv:
        hv.delete_snapshot(str(vm.uuid), name)
    ctx.log(f"snapshot {name} deleted")


def resize_vm(ctx: StepContext) -> None:
    vm = vm_of(ctx)
    flavor = Flavor.objects.get(name=ctx.job.params["flavor"])
    with hypervisor(vm) as hv:
        hv.resize(str(vm.uuid), vcpus=flavor.vcpus, memory_mib=flavor.memory_mb)
    VirtualMachine.objects.filter(pk=vm.pk).update(flavor=flavor)
    ctx.log(f"now {flavor}")


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
    register(Plan(f"vm_{action}", (Step(action.replace("_", " "), run),)))
