"""The core domain, one module per part of it: the operator's catalogue (hosts,
images, flavors), each team's environments (VMs, forwards, samples), what it
releases into them (services, releases, deployments, containers, secrets), and
the jobs that converge the real world toward what the rows desire.

Django loads the models of an app from this package; the imports below are the
app's models, and the names ``from cloud.models import ...`` takes.
"""

from cloud.models.catalogue import (
    Flavor,
    Host,
    HostStatus,
    Image,
    ImageFormat,
    ImageSource,
    Orphan,
    OrphanKind,
    # Migrations 0001 and 0007 name these by their path here; history is not rewritten.
    cpu_mode_name,
    default_cpu_mode,
    default_virt_type,
    sha256_hex,
)
from cloud.models.console import ConsoleTicket
from cloud.models.environments import (
    Environment,
    EnvironmentKind,
    PortForward,
    VirtualMachine,
    VMSample,
)
from cloud.models.jobs import Job, JobStep, JobStepState
from cloud.models.registry import ExternalRegistry, RegistryImage, RegistryTag
from cloud.models.releases import (
    Container,
    ContainerHealth,
    ContainerState,
    Deployment,
    DeploymentTarget,
    Release,
    Secret,
    Service,
    ServiceRestartPolicy,
    TargetOutcome,
)
from cloud.models.states import DeploymentState, JobState, VMState
from cloud.models.templates import Template, TemplateState

__all__ = [
    "ConsoleTicket",
    "Container",
    "ContainerHealth",
    "ContainerState",
    "Deployment",
    "DeploymentState",
    "DeploymentTarget",
    "Environment",
    "EnvironmentKind",
    "ExternalRegistry",
    "Flavor",
    "Host",
    "HostStatus",
    "Image",
    "ImageFormat",
    "ImageSource",
    "Job",
    "JobState",
    "JobStep",
    "JobStepState",
    "Orphan",
    "OrphanKind",
    "PortForward",
    "RegistryImage",
    "RegistryTag",
    "Release",
    "Secret",
    "Service",
    "ServiceRestartPolicy",
    "TargetOutcome",
    "Template",
    "TemplateState",
    "VMSample",
    "VMState",
    "VirtualMachine",
    "cpu_mode_name",
    "default_cpu_mode",
    "default_virt_type",
    "sha256_hex",
]
