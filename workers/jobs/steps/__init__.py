"""Job plans: each module registers the named steps of some job kinds."""

from workers.jobs.steps import deploy, environment, vm, vm_ops  # noqa: F401 - registration
