"""The reconciler removes the templates no VM will be made from again: stale,
failed, outdated or superseded ones, once no VM's disk is backed by them."""

import os
from datetime import timedelta

import pytest
from django.utils import timezone

from cloud.models import Job, Template, VirtualMachine
from tests.foundation.factories import team_world
from workers.jobs.adapters import host_hypervisor
from workers.jobs.reconcile import reconcile_host
from workers.jobs.templates import GUEST_CONFIG_VERSION, fresh_template

pytestmark = [pytest.mark.django_db, pytest.mark.libvirt]


def make_template(vm, state, built_minutes_ago, **fields):
    return Template.objects.create(
        host=vm.host,
        image=vm.image,
        flavor=vm.flavor,
        image_sha256=fields.pop("image_sha256", vm.image.sha256),
        guest_config_version=fields.pop("guest_config_version", GUEST_CONFIG_VERSION),
        state=state,
        host_key_public="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0 strata-template",
        host_key_private="-----BEGIN OPENSSH PRIVATE KEY-----",
        built_at=timezone.now() - timedelta(minutes=built_minutes_ago),
        **fields,
    )


def test_unused_templates_go_and_the_newest_and_those_in_use_stay(make_team):
    team, _ = make_team("alpha")
    vm = VirtualMachine.objects.get(environment=team_world(team, port=20022))
    Job.objects.filter(vm=vm).update(state="succeeded")
    superseded = make_template(vm, "ready", 60)
    newest = make_template(vm, "ready", 5)
    outdated = make_template(vm, "ready", 1, image_sha256="0" * 64)
    older_config = make_template(vm, "ready", 1, guest_config_version=GUEST_CONFIG_VERSION - 1)
    failed = make_template(vm, "failed", 1)
    stale_in_use = make_template(vm, "stale", 90)
    VirtualMachine.objects.filter(pk=vm.pk).update(state="running", template=stale_in_use)
    with host_hypervisor(vm.host) as hv:
        state_dir = hv.storage.templates_dir
        os.makedirs(state_dir, exist_ok=True)
        state_file = hv.templates.state_path(superseded.name)
        with open(state_file, "wb") as state:
            state.write(b"LibvirtQemudSave")

    vm.refresh_from_db()
    assert fresh_template(vm)[0] == newest
    counts = reconcile_host(vm.host.pk)

    assert counts["templates_collected"] == 4
    left = set(Template.objects.values_list("pk", flat=True))
    assert left == {newest.pk, stale_in_use.pk}
    assert not os.path.exists(state_file)
    assert {superseded.pk, outdated.pk, older_config.pk, failed.pk}.isdisjoint(left)


def test_build_template_names_what_it_cannot_find_and_makes_nothing():
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="Host matching query does not exist"):
        call_command("build_template", host="nowhere", image="debian-12", flavor="small")
    assert not Template.objects.exists()
