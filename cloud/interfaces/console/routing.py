"""Websocket URLs, beside the portal's HTTP ones."""

from django.urls import path

from .consumer import ConsoleConsumer
from .shell_consumer import ExecConsumer, LogsConsumer, SshConsumer

SERVICE = "ws/teams/<str:team>/environments/<int:env_id>/services/<str:service_name>"

websocket_urlpatterns = [
    path("ws/vms/<int:vm_id>/console/", ConsoleConsumer.as_asgi()),
    path("ws/teams/<str:team>/vms/<int:vm_id>/ssh/", SshConsumer.as_asgi()),
    path(f"{SERVICE}/exec/", ExecConsumer.as_asgi()),
    path(f"{SERVICE}/logs/", LogsConsumer.as_asgi()),
]
