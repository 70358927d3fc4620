import pytest

from cloud.models import Flavor, Job, VirtualMachine
from cloud.services import environments
from cloud.services.errors import Busy, Forbidden, NotFound, QuotaExceeded, ValidationError
from tenants.models import Quota

pytestmark = pytest.mark.django_db


@pytest.fixture
def running_vm(make_team, catalogue):
    team, user = make_team("alpha", "developer")
    job = environments.create_environment(
        user=user, team=team, name="web", kind="dev", vm_count=1, flavor="small", image="debian-12"
    )
    Job.objects.filter(pk=job.pk).update(state="succeeded")  # provisioning done
    vm = VirtualMachine.objects.get(environment=job.environment)
    VirtualMachine.objects.filter(pk=vm.pk).update(state="running")
    return team, user, vm


def act(team, user, vm, action, **params):
    return environments.vm_action(user=user, team=team, vm_id=vm.pk, action=action, **params)


def test_snapshot_job_on_the_vms_host_queue(running_vm):
    team, user, vm = running_vm
    job = act(team, user, vm, "snapshot", snapshot="before-upgrade")
    assert job.kind == "vm_snapshot" and job.queue == vm.host.queue
    assert job.params == {"snapshot": "before-upgrade"}
    assert [s.name for s in job.steps.all()] == ["snapshot"]


@pytest.mark.parametrize(
    "action, params, field",
    [
        ("explode", {}, "action"),
        ("resize", {"flavor": "small"}, "action"),  # needs a stopped VM
        ("start", {}, "action"),  # already running
        ("snapshot", {"snapshot": "../../etc"}, "snapshot"),
        ("snapshot", {"snapshot": "a'><x"}, "snapshot"),
        ("snapshot", {}, "snapshot"),
    ],
)
def test_bad_actions_are_refused_naming_the_field(running_vm, action, params, field):
    team, user, vm = running_vm
    before = Job.objects.count()
    with pytest.raises(ValidationError) as err:
        act(team, user, vm, action, **params)
    assert set(err.value.message_dict) == {field}
    assert Job.objects.count() == before


def test_resize_checks_flavor_and_quota(running_vm):
    team, user, vm = running_vm
    VirtualMachine.objects.filter(pk=vm.pk).update(state="stopped")
    with pytest.raises(ValidationError) as err:
        act(team, user, vm, "resize", flavor="nope")
    assert set(err.value.message_dict) == {"flavor"}
    Flavor.objects.create(name="big", vcpus=8, memory_mb=8192, disk_gb=5)
    Quota.objects.filter(team=team).update(vcpus=4)
    with pytest.raises(QuotaExceeded, match="vcpus"):
        act(team, user, vm, "resize", flavor="big")
    Quota.objects.filter(team=team).update(vcpus=16)
    assert act(team, user, vm, "resize", flavor="big").params == {"flavor": "big"}


def test_viewers_cannot_act_and_strangers_see_nothing(running_vm, make_team):
    team, _, vm = running_vm
    from tenants.models import Membership

    viewer = make_team("other", "viewer")[1]
    Membership.objects.create(team=team, user=viewer, role="viewer")
    with pytest.raises(Forbidden):
        act(team, viewer, vm, "reboot")
    stranger_team, stranger = make_team("beta")
    with pytest.raises(NotFound):
        act(stranger_team, stranger, vm, "reboot")


def test_one_operation_at_a_time_per_environment(running_vm):
    team, user, vm = running_vm
    first = act(team, user, vm, "reboot")
    with pytest.raises(Busy) as busy:
        act(team, user, vm, "snapshot", snapshot="s1")
    assert busy.value.job == first
