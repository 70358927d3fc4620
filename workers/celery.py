"""The Celery app.  Workers serve the default queue and, on a hypervisor host,
that host's own queue (``host.<name>``) so its jobs run next to its libvirt."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cloud.settings")

app = Celery("strata")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["workers"])
