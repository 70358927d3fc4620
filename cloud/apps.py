from django.apps import AppConfig


class CloudConfig(AppConfig):
    name = "cloud"
    verbose_name = "Cloud"

    def ready(self):
        # The admin is an interface and lives with the others; the job plans
        # register once here rather than as a side effect of whoever imports first.
        from cloud.interfaces import admin  # noqa: F401
        from workers.jobs import steps  # noqa: F401
