"""Small builders for a complete team-owned object graph."""

from datetime import timedelta

from django.utils import timezone

from cloud.models import (
    ConsoleTicket,
    Container,
    Deployment,
    DeploymentTarget,
    Environment,
    ExternalRegistry,
    Flavor,
    Host,
    Image,
    Job,
    JobStep,
    PortForward,
    RegistryImage,
    RegistryTag,
    Release,
    Secret,
    Service,
    VirtualMachine,
    VMSample,
)
from tenants.models import Membership

SHA = "a" * 64


def catalogue():
    host, _ = Host.objects.get_or_create(
        name="hv1", defaults={"libvirt_uri": "test:///default", "cpus": 8, "memory_mb": 16384}
    )
    flavor, _ = Flavor.objects.get_or_create(
        name="small", defaults={"vcpus": 1, "memory_mb": 512, "disk_gb": 5}
    )
    image, _ = Image.objects.get_or_create(
        name="debian-12",
        defaults={
            "sha256": SHA,
            "path": "/var/lib/strata/images/x.qcow2",
            "virtual_size_bytes": 3 << 30,
            "size_bytes": 1 << 28,
            "source": "built",
        },
    )
    return host, flavor, image


def team_world(team, port: int):
    """One of everything a team owns, so scoping can be checked model by model."""
    host, flavor, image = catalogue()
    env = Environment.objects.create(team=team, name="dev", kind="dev")
    vm = VirtualMachine.objects.create(
        environment=env, name="vm1", host=host, flavor=flavor, image=image
    )
    PortForward.objects.create(host=host, host_port=port, vm=vm, guest_port=22)
    VMSample.objects.create(vm=vm, cpu_percent=12.5, cpu_time_ns=10**9, memory_mib=300)
    service = Service.objects.create(environment=env, name="web", image="web:1")
    release = Release.objects.create(
        service=service, version=1, image_digest="sha256:" + SHA, spec={"image": "web:1"}
    )
    deployment = Deployment.objects.create(environment=env, release=release)
    DeploymentTarget.objects.create(deployment=deployment, vm=vm)
    Container.objects.create(vm=vm, service=service, release=release, name="web-1")
    Secret.objects.create(team=team, name="token", value="s3cret")
    job = Job.objects.create(team=team, kind="provision", environment=env, vm=vm)
    JobStep.objects.create(job=job, index=0, name="create-disk")
    member = Membership.objects.filter(team=team).first()
    if member is not None:  # a console ticket is a member's
        ConsoleTicket.objects.create(
            digest=f"{team.pk:064x}",
            user=member.user,
            vm=vm,
            origin="http://testserver",
            expires_at=timezone.now() + timedelta(minutes=1),
        )
    pushed = RegistryImage.objects.create(
        team=team, repository=f"{team.name}/web", digest="sha256:" + SHA, size=1,
        media_type="application/vnd.oci.image.manifest.v1+json", pushed_at=timezone.now(),
    )
    RegistryTag.objects.create(image=pushed, repository=pushed.repository, tag="1")
    ExternalRegistry.objects.create(
        team=team, host="registry.example.com", username="ci", password="ci-password"
    )
    return env
