import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from tenants.models import ApiToken

pytestmark = pytest.mark.django_db


def test_make_a_token_use_it_and_revoke_it(client, make_team):
    team, user = make_team("alpha")
    client.force_login(user)
    page = client.post(reverse("portal:tokens"), {"name": "CI deploys"})
    assert page.status_code == 200
    key = page.context["new_key"]
    assert key.startswith("strata_") and key.encode() in page.content
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert api.get("/api/v1/teams/").status_code == 200
    # Shown once: the list never shows the key again.
    assert key.encode() not in client.get(reverse("portal:tokens")).content
    token = ApiToken.objects.get(user=user)
    client.post(reverse("portal:token-revoke", args=[token.pk]))
    assert api.get("/api/v1/teams/").status_code == 401


def test_names_are_checked_and_others_tokens_do_not_exist(client, make_team):
    _, user = make_team("alpha")
    _, other = make_team("beta")
    client.force_login(user)
    bad = client.post(reverse("portal:tokens"), {"name": "<script>alert(1)</script>"})
    assert bad.status_code == 400 and b"&lt;script&gt;" not in bad.content.split(b"errorlist")[0]
    assert not ApiToken.objects.exists()
    theirs, _ = ApiToken.issue(other, "theirs")
    assert client.post(reverse("portal:token-revoke", args=[theirs.pk])).status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None
