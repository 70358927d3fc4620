import pytest

from cloud.models import Deployment, Job, VirtualMachine
from cloud.models.states import DEPLOYMENT_MACHINE, JOB_MACHINE, VM_MACHINE, InvalidTransition
from tenants.models import Team
from tests.foundation.factories import team_world


@pytest.mark.parametrize(
    "machine, path",
    [
        (VM_MACHINE, ["scheduled", "provisioning", "running", "stopping", "stopped", "deleting"]),
        (VM_MACHINE, ["running", "lost", "deleting", "deleted"]),
        (JOB_MACHINE, ["queued", "running", "queued", "running", "succeeded"]),
        (DEPLOYMENT_MACHINE, ["pending", "rolling_out", "rolled_back"]),
    ],
)
def test_valid_paths(machine, path):
    for current, target in zip(path, path[1:], strict=False):
        machine.check(current, target)


@pytest.mark.parametrize(
    "machine, current, target",
    [
        (VM_MACHINE, "deleted", "running"),
        (VM_MACHINE, "scheduled", "running"),
        (VM_MACHINE, "running", "nonsense"),
        (JOB_MACHINE, "succeeded", "running"),
        (JOB_MACHINE, "cancelled", "queued"),
        (DEPLOYMENT_MACHINE, "failed", "succeeded"),
    ],
)
def test_invalid_transitions_raise(machine, current, target):
    with pytest.raises(InvalidTransition, match=f"{current!r} to {target!r}"):
        machine.check(current, target)


def test_final_states():
    assert VM_MACHINE.final_states == {"deleted"}
    assert JOB_MACHINE.final_states == {"succeeded", "failed", "cancelled"}


@pytest.mark.django_db
def test_models_move_only_along_their_machine():
    env = team_world(Team.objects.create(name="a"), port=20022)
    vm = VirtualMachine.objects.get(environment=env)
    with pytest.raises(InvalidTransition):
        vm.move_to("running")
    vm.refresh_from_db()
    assert vm.state == "scheduled"
    vm.move_to("provisioning")
    vm.move_to("running")
    assert VirtualMachine.objects.get(pk=vm.pk).state == "running"

    job = Job.objects.get(environment=env)
    job.move_to("running")
    assert job.started_at is not None and job.finished_at is None
    job.move_to("failed", error="disk full")
    job.refresh_from_db()
    assert job.is_finished and job.finished_at and job.error == "disk full"

    deployment = Deployment.objects.get(environment=env)
    with pytest.raises(InvalidTransition):
        deployment.move_to("superseded")
