"""A provisioning job resumed after its worker died between a step's side
effect and the step's DONE write: the step runs again and the job goes on."""

import pytest

from cloud.models import Job
from workers.jobs import engine as jobs

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_check_docker_again_on_a_vm_it_already_marked_running(sshd_guest):
    """Finding 16: a worker SIGKILLed after check docker marked the VM running, before
    the step was recorded done: the resumed run repeats the step and the job succeeds."""
    vm, _engine, _image = sshd_guest
    assert vm.state == "running"  # what the killed run's check docker wrote
    job = jobs.create_job(
        team=vm.environment.team, kind="provision_vm", vm=vm, queue=vm.host.queue
    )
    job.steps.exclude(name="check docker").update(state="done")
    job.steps.filter(name="check docker").update(state="running")
    Job.objects.filter(pk=job.pk).update(state="running", attempts=1)

    jobs.run(str(job.pk))

    job.refresh_from_db()
    vm.refresh_from_db()
    assert job.state == "succeeded", job.error
    assert vm.state == "running"
    steps = jobs.PLANS["provision_vm"].steps
    assert list(job.steps.values_list("state", flat=True)) == ["done"] * len(steps)
