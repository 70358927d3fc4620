"""Console tickets: the one-use pass a websocket shows to open a VM's console.

The key is shown once to the page that asked for it; only its digest is kept.
A ticket is bound to the user, the VM and the page's origin, is redeemed at
most once (``used_at`` is set by one conditional UPDATE, so two sockets racing
with one key cannot both win) and then records the session it opened.
"""

from django.conf import settings
from django.db import models

from tenants.models import scoped_queryset


class ConsoleTicket(models.Model):
    digest = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    vm = models.ForeignKey("cloud.VirtualMachine", on_delete=models.CASCADE)
    origin = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    # The session: when the ticket was redeemed, whether it may type, how it ended.
    used_at = models.DateTimeField(null=True, blank=True)
    can_type = models.BooleanField(default=False)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=200, blank=True)

    objects = scoped_queryset("vm__environment__team").as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["vm", "-created_at"])]

    def __str__(self):
        return f"console ticket {self.pk} of {self.user} for {self.vm}"
