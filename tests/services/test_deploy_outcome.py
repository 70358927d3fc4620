"""Finding 11: a multi-VM deployment's outcome follows from each VM's typed
outcome; the job that puts VMs back holds the environment until it is done,
and a VM that could not go back is reported as such."""

import pytest

from cloud.models import (
    Deployment,
    DeploymentTarget,
    Environment,
    Job,
)
from cloud.services import deployments
from tests.services.conftest import dev_environment
from workers.jobs import engine as jobs

pytestmark = pytest.mark.django_db

Outcome = DeploymentTarget.Outcome


@pytest.fixture
def dev(make_team, catalogue):
    team, user = make_team("alpha")
    env = dev_environment(team, catalogue, "vm1", "vm2")
    return team, user, env


def deploy(dev, **spec):
    team, user, env = dev
    return deployments.deploy(
        user=user, team=team, env_id=env.pk, service_name="web", image="alpha/web:1", **spec
    )


def end(job, state, error="", outcome=None):
    """End one per-VM job as a worker would, with the outcome its rollout recorded."""
    Job.objects.filter(pk=job.pk).update(state="running")
    if outcome is not None:
        DeploymentTarget.objects.filter(
            deployment_id=job.params["deployment"], vm=job.vm
        ).update(outcome=outcome, detail=error or "ok")
    jobs.finish(Job.objects.get(pk=job.pk), state, error)


def test_targets_are_made_pending_for_every_vm(dev):
    """Finding 11: each VM of a deployment has a typed outcome from the start."""
    job = deploy(dev, replicas=2)
    targets = DeploymentTarget.objects.filter(deployment_id=job.params["deployment"])
    assert sorted(targets.values_list("vm__name", "outcome")) == [
        ("vm1", Outcome.PENDING),
        ("vm2", Outcome.PENDING),
    ]


def test_the_revert_holds_the_environment_and_a_failed_revert_fails_the_deployment(dev):
    """Finding 11: vm1 succeeded, vm2 rolled back: vm1 is put back by a job that
    takes over the lock and the waiters; when that fails, the deployment says so."""
    team, user, env = dev
    job = deploy(dev, replicas=2)
    waiter = deploy(dev, replicas=2, queue_if_busy=True)
    first, second = job.children.order_by("vm__name")
    end(first, "succeeded", outcome=Outcome.SUCCEEDED)
    end(second, "failed", "rolled back: unhealthy; serving nothing", Outcome.ROLLED_BACK)

    deployment = Deployment.objects.get(pk=job.params["deployment"])
    revert = Job.objects.get(kind="deploy_revert")
    assert deployment.state == "rolling_out"
    assert Environment.objects.get(pk=env.pk).lock_job_id == revert.pk
    assert Job.objects.get(pk=waiter.pk).waits_for_id == revert.pk
    assert [c.vm.name for c in revert.children.all()] == ["vm1"]
    assert f"putting 1 VM(s) back (job {revert.pk})" in Job.objects.get(pk=job.pk).error

    end(revert.children.get(), "failed", "go back: ssh gone")
    deployment.refresh_from_db()
    assert deployment.state == "failed"
    outcomes = dict(deployment.targets.values_list("vm__name", "outcome"))
    assert outcomes == {"vm1": Outcome.REVERT_FAILED, "vm2": Outcome.ROLLED_BACK}
    assert "vm1: revert_failed: go back: ssh gone" in deployment.reason
    # Only now does the waiting job get the environment.
    assert Environment.objects.get(pk=env.pk).lock_job_id == waiter.pk


def test_a_vm_whose_job_failed_otherwise_makes_the_deployment_failed(dev):
    """Finding 11: not every failure is a rollback; the state is never read from error text."""
    job = deploy(dev, replicas=2)
    first, second = job.children.order_by("vm__name")
    end(first, "failed", "roll out: rolled back: not my words", Outcome.ROLLED_BACK)
    end(second, "failed", "resolve image: rolled back? no: the image is gone")
    deployment = Deployment.objects.get(pk=job.params["deployment"])
    assert deployment.state == "failed"
    assert not Job.objects.filter(kind="deploy_revert").exists()
    outcomes = dict(deployment.targets.values_list("vm__name", "outcome"))
    assert outcomes == {"vm1": Outcome.ROLLED_BACK, "vm2": Outcome.FAILED}


def test_every_vm_rolled_back_is_a_rolled_back_deployment(dev):
    """Finding 11: with no VM reached by the new release, nothing needs putting back."""
    job = deploy(dev, replicas=2)
    for child in job.children.all():
        end(child, "failed", "rolled back: unhealthy", Outcome.ROLLED_BACK)
    deployment = Deployment.objects.get(pk=job.params["deployment"])
    assert deployment.state == "rolled_back"
    assert Environment.objects.get(pk=deployment.environment_id).lock_job is None
