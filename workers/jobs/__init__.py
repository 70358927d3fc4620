"""The job layer: the engine, the steps of each plan, the reconciler, and the
adapters that turn models into driver objects. Django-aware."""
