"""Websocket URLs, beside the portal's HTTP ones."""

from django.urls import path

from .consumer import ConsoleConsumer

websocket_urlpatterns = [
    path("ws/vms/<int:vm_id>/console/", ConsoleConsumer.as_asgi()),
]
