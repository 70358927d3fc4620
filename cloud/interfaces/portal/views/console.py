"""A console ticket for the VM page's terminal: asked for by the page's script
(POST, so the session's CSRF rule applies) and shown once in the answer."""

from django.http import JsonResponse
from django.views.decorators.http import require_POST

from cloud.services.console import issue_ticket
from cloud.services.errors import ValidationError

from .base import team_page


@require_POST
@team_page
def ticket(request, team, vm_id):
    try:
        issued = issue_ticket(request.user, team, vm_id, request.headers.get("Origin", ""))
    except ValidationError as error:
        return JsonResponse({"errors": error.message_dict}, status=400)
    return JsonResponse(
        {
            "ticket": issued.key,
            "websocket_path": f"/ws/vms/{issued.ticket.vm_id}/console/",
            "expires_at": issued.ticket.expires_at.isoformat(),
        }
    )
