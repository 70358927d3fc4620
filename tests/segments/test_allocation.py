"""An environment's subnet and its VMs' addresses, written by create_environment:
a bad pool is a 400 naming the setting, an exhausted one a 409, and a refusal
leaves nothing; concurrent creates on PostgreSQL get distinct subnets."""

import threading

import pytest
from django.db import connection

from cloud.models import Environment, Job, VirtualMachine
from cloud.services import environments
from cloud.services.errors import Conflict, ValidationError
from tests.api.conftest import api_as  # noqa: F401 - fixture
from tests.services.conftest import catalogue  # noqa: F401 - fixture
from workers.drivers.hypervisor.spec import mac_address_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def pool(settings):
    settings.STRATA_SUBNET_POOL = ["10.240.0.0/16"]
    settings.STRATA_SUBNET_PREFIX = "24"
    return settings


def create(user, team, **overrides):
    args = {"name": "web", "kind": "dev", "vm_count": 2, "flavor": "small", "image": "debian-12"}
    return environments.create_environment(user=user, team=team, **{**args, **overrides})


def nothing_made():
    return not (
        Environment.objects.exists() or Job.objects.exists() or VirtualMachine.objects.exists()
    )


def counts() -> tuple[int, int, int]:
    return Environment.objects.count(), Job.objects.count(), VirtualMachine.objects.count()


def test_environment_gets_a_subnet_and_each_vm_an_address_and_derived_mac(
    make_team, catalogue, pool  # noqa: F811
):
    team, user = make_team("alpha")
    create(user, team)
    create(user, team, name="api", egress="nat")
    web, api = Environment.objects.get(name="web"), Environment.objects.get(name="api")
    assert (web.subnet, api.subnet) == ("10.240.0.0/24", "10.240.1.0/24")
    assert (web.egress, api.egress) == ("isolated", "nat")
    assert web.network_name == f"strata-{web.network_uuid.hex}" != api.network_name
    vms = list(web.vms.order_by("name"))
    assert [vm.segment_ip for vm in vms] == ["10.240.0.2", "10.240.0.3"]
    assert [vm.mac_address for vm in vms] == [mac_address_for(vm.uuid.hex) for vm in vms]


def test_without_a_pool_environments_have_no_segment(make_team, catalogue, settings):  # noqa: F811
    settings.STRATA_SUBNET_POOL = []
    team, user = make_team("alpha")
    create(user, team)
    env = Environment.objects.get()
    assert env.subnet is None and env.network_name is None
    assert {vm.segment_ip for vm in env.vms.all()} == {None}


@pytest.mark.parametrize(
    "pool_value, prefix, field, words",
    [
        (["8.8.0.0/16"], "24", "STRATA_SUBNET_POOL", "pools[0]: 8.8.0.0/16 is not a private"),
        (["10.240.0.0/16", "10.240.7.0/24"], "24", "STRATA_SUBNET_POOL", "overlaps pools[0]"),
        (["10.240.0.1/16"], "24", "STRATA_SUBNET_POOL", "not an IPv4 network"),
        (["10.240.0.0/16"], "31", "STRATA_SUBNET_PREFIX", "between 8 and 28"),
        (["10.240.0.0/16"], "twenty", "STRATA_SUBNET_PREFIX", "whole number"),
    ],
)
def test_a_bad_pool_is_a_400_naming_the_setting_and_makes_nothing(
    make_team, catalogue, settings, pool_value, prefix, field, words  # noqa: F811
):
    settings.STRATA_SUBNET_POOL, settings.STRATA_SUBNET_PREFIX = pool_value, prefix
    team, user = make_team("alpha")
    with pytest.raises(ValidationError) as refused:
        create(user, team)
    assert not isinstance(refused.value, Conflict)
    assert words in refused.value.message_dict[field][0]
    assert nothing_made()


def test_an_exhausted_pool_is_a_409_and_makes_nothing(make_team, catalogue, settings, api_as):  # noqa: F811
    settings.STRATA_SUBNET_POOL, settings.STRATA_SUBNET_PREFIX = ["10.240.0.0/23"], "24"
    team, user = make_team("alpha")
    create(user, team, name="one")
    create(user, team, name="two")
    made = counts()
    answer = api_as(user).post(
        "/api/v1/teams/alpha/environments/",
        {"name": "three", "kind": "dev", "vm_count": 1},
        format="json",
    )
    assert answer.status_code == 409, answer.content
    assert "all 2 /24 subnets of 10.240.0.0/23 are taken" in answer.json()["STRATA_SUBNET_POOL"][0]
    assert counts() == made


def test_a_subnet_too_small_for_the_vms_is_a_409_naming_vm_count(
    make_team, catalogue, settings  # noqa: F811
):
    # A /28 has 14 hosts: the gateway, 6 static addresses, 7 dynamic ones.
    settings.STRATA_SUBNET_POOL, settings.STRATA_SUBNET_PREFIX = ["10.240.0.0/24"], "28"
    team, user = make_team("alpha")
    with pytest.raises(Conflict) as refused:
        create(user, team, vm_count=7)
    assert "has 6 VM addresses left, 7 requested" in refused.value.message_dict["vm_count"][0]
    assert nothing_made()


def test_bad_egress_is_a_400_naming_egress(make_team, catalogue, pool, api_as):  # noqa: F811
    team, user = make_team("alpha")
    answer = api_as(user).post(
        "/api/v1/teams/alpha/environments/",
        {"name": "web", "kind": "dev", "egress": "bridge"},
        format="json",
    )
    assert answer.status_code == 400
    assert "egress" in answer.json()
    assert nothing_made()


def test_a_destroyed_environment_gives_its_subnet_back(make_team, catalogue, pool):  # noqa: F811
    team, user = make_team("alpha")
    create(user, team, name="one")
    create(user, team, name="two")
    # What the destroy job's on_finish does once every VM is gone.
    Environment.objects.filter(name="one").update(lock_job=None)
    VirtualMachine.objects.filter(environment__name="one").delete()
    Job.objects.filter(environment__name="one").delete()
    Environment.objects.filter(name="one").delete()
    create(user, team, name="three")
    assert Environment.objects.get(name="three").subnet == "10.240.0.0/24"


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_concurrent_creates_of_two_teams_get_distinct_subnets(make_team, catalogue, pool):  # noqa: F811
    if connection.vendor != "postgresql":
        pytest.fail("this race needs PostgreSQL (set DATABASE_URL)")
    requesters = [make_team(name) for name in ("alpha", "beta", "gamma", "delta")]
    outcomes, barrier = [], threading.Barrier(len(requesters))

    def request(team, user):
        try:
            barrier.wait()
            create(user, team, vm_count=1)
            outcomes.append("created")
        except Exception as exc:  # noqa: BLE001 - shown in the assertion below
            outcomes.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=request, args=pair) for pair in requesters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == ["created"] * len(requesters)
    subnets = sorted(Environment.objects.values_list("subnet", flat=True))
    assert subnets == [f"10.240.{i}.0/24" for i in range(len(requesters))]
