"""Job plans: each module registers the named steps of some job kinds."""

from workers.steps import environment, vm  # noqa: F401 - registration
