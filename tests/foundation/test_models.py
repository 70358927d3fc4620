import pytest
from django.db import IntegrityError, connection, transaction

from cloud.models import (
    Environment,
    Flavor,
    Job,
    PortForward,
    Release,
    Secret,
    Service,
    VirtualMachine,
)
from tenants.models import Membership, Quota, Team
from tests.foundation.factories import SHA, catalogue, team_world

pytestmark = pytest.mark.django_db


def violates(fn):
    with pytest.raises(IntegrityError), transaction.atomic():
        fn()


def test_environment_names_unique_per_team_only():
    a, b = Team.objects.create(name="a"), Team.objects.create(name="b")
    Environment.objects.create(team=a, name="web", kind="dev")
    Environment.objects.create(team=b, name="web", kind="dev")
    violates(lambda: Environment.objects.create(team=a, name="web", kind="prod"))


def test_environment_kind_must_be_known():
    team = Team.objects.create(name="a")
    violates(lambda: Environment.objects.create(team=team, name="x", kind="qa"))


def test_membership_once_per_team_with_valid_role(django_user_model):
    team = Team.objects.create(name="a")
    user = django_user_model.objects.create_user("u")
    Membership.objects.create(team=team, user=user, role="viewer")
    violates(lambda: Membership.objects.create(team=team, user=user, role="admin"))
    other = Team.objects.create(name="b")
    violates(lambda: Membership.objects.create(team=other, user=user, role="root"))


def test_sizes_cannot_be_negative_or_zero():
    team = Team.objects.create(name="a")
    violates(lambda: Quota.objects.create(team=team, vcpus=-1))
    violates(lambda: Flavor.objects.create(name="zero", vcpus=0, memory_mb=512, disk_gb=1))
    violates(lambda: Flavor.objects.create(name="tiny", vcpus=1, memory_mb=64, disk_gb=1))


def test_states_outside_the_machine_are_refused_by_the_database():
    env = team_world(Team.objects.create(name="a"), port=20022)
    vm = VirtualMachine.objects.get(environment=env)
    violates(lambda: VirtualMachine.objects.filter(pk=vm.pk).update(state="flying"))
    job = Job.objects.get(environment=env)
    violates(lambda: Job.objects.filter(pk=job.pk).update(state="done"))
    violates(lambda: Job.objects.filter(pk=job.pk).update(progress=101))


def test_a_loopback_port_is_forwarded_once_per_host():
    env = team_world(Team.objects.create(name="a"), port=20022)
    host, _, _ = catalogue()
    vm = VirtualMachine.objects.get(environment=env)
    violates(lambda: PortForward.objects.create(host=host, host_port=20022, vm=vm, guest_port=80))
    violates(lambda: PortForward.objects.create(host=host, host_port=70000, vm=vm, guest_port=80))


def test_releases_are_numbered_once_and_immutable():
    env = team_world(Team.objects.create(name="a"), port=20022)
    service = Service.objects.get(environment=env)
    violates(lambda: Release.objects.create(service=service, version=1, image_digest="x", spec={}))
    violates(lambda: Release.objects.create(service=service, version=0, image_digest="x", spec={}))
    release = Release.objects.get(service=service)
    release.spec = {"image": "other"}
    with pytest.raises(ValueError, match="immutable"):
        release.save()


def test_secrets_are_encrypted_at_rest():
    team = Team.objects.create(name="a")
    Secret.objects.create(team=team, name="db-password", value="hunter2")
    with connection.cursor() as cursor:
        cursor.execute("SELECT value FROM cloud_secret")
        (stored,) = cursor.fetchone()
    assert "hunter2" not in stored and stored.startswith("gAAAA")
    assert Secret.objects.get(name="db-password").value == "hunter2"


def test_vm_private_host_key_is_encrypted_at_rest():
    env = team_world(Team.objects.create(name="a"), port=20022)
    VirtualMachine.objects.filter(environment=env).update()
    vm = VirtualMachine.objects.get(environment=env)
    vm.host_key_private = "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n"
    vm.save()
    with connection.cursor() as cursor:
        cursor.execute("SELECT host_key_private FROM cloud_virtualmachine")
        (stored,) = cursor.fetchone()
    assert "OPENSSH" not in stored
    assert VirtualMachine.objects.get(pk=vm.pk).host_key_private.startswith("-----BEGIN")


def test_image_checksum_must_be_sha256_hex():
    _, _, image = catalogue()
    image.sha256 = "not-a-checksum"
    with pytest.raises(Exception, match="sha256"):
        image.full_clean()
    image.sha256 = SHA
    image.full_clean()
