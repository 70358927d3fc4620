"""The caller's own API tokens: make one (its key is shown once), revoke one."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from cloud.interfaces.portal.forms import TokenForm
from tenants.models import ApiToken, AuditEvent


@login_required
def token_list(request):
    form = TokenForm(request.POST or None)
    new_key = None
    if request.method == "POST" and form.is_valid():
        token, new_key = ApiToken.issue(request.user, form.cleaned_data["name"])
        AuditEvent.record("token.create", actor=request.user, target=token)
        form = TokenForm()
    tokens = ApiToken.objects.filter(user=request.user)
    return render(
        request,
        "portal/tokens.html",
        {"form": form, "tokens": tokens, "new_key": new_key, "section": "tokens"},
        status=400 if form.errors else 200,
    )


@require_POST
@login_required
def token_revoke(request, token_id):
    # Only the caller's own tokens exist here.
    updated = ApiToken.objects.filter(pk=token_id, user=request.user, revoked_at=None).update(
        revoked_at=timezone.now()
    )
    if not updated:
        raise Http404("no such token")
    AuditEvent.record("token.revoke", actor=request.user, token_id=token_id)
    messages.success(request, "Token revoked: it no longer opens the API.")
    return redirect("portal:tokens")
