"""Secrets get a scope (an environment kind, or one environment).

Existing team-wide secrets keep working where they are used: each goes to the
kinds whose services or releases reference it (a copy per kind), and one that
nothing references goes to prod, the most guarded scope.
"""

from collections import defaultdict

import django.db.models.deletion
from django.db import migrations, models


def scope_existing_secrets(apps, schema_editor):
    Secret = apps.get_model("cloud", "Secret")
    Service = apps.get_model("cloud", "Service")
    Release = apps.get_model("cloud", "Release")
    kinds_using = defaultdict(set)
    references = [
        *Service.objects.values_list("environment__team_id", "environment__kind", "secret_env"),
        *Release.objects.values_list(
            "service__environment__team_id", "service__environment__kind", "spec__secret_env"
        ),
    ]
    for team_id, kind, secret_env in references:
        for name in (secret_env or {}).values():
            kinds_using[team_id, name].add(kind)
    for secret in Secret.objects.all():
        first, *others = sorted(kinds_using.get((secret.team_id, secret.name)) or {"prod"})
        secret.scope = first
        secret.save(update_fields=["scope"])
        for kind in others:
            Secret.objects.create(
                team_id=secret.team_id, scope=kind, name=secret.name, value=secret.value
            )


class Migration(migrations.Migration):
    dependencies = [("cloud", "0003_job_lease")]

    operations = [
        migrations.RemoveConstraint(model_name="secret", name="secret_name_unique_in_team"),
        migrations.AddField(
            model_name="secret",
            name="scope",
            field=models.CharField(
                choices=[("dev", "Dev"), ("staging", "Staging"), ("prod", "Prod")],
                default="prod",
                max_length=10,
            ),
        ),
        migrations.AddField(
            model_name="secret",
            name="environment",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="secrets",
                to="cloud.environment",
            ),
        ),
        migrations.RunPython(scope_existing_secrets, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="secret",
            constraint=models.UniqueConstraint(
                condition=models.Q(environment__isnull=True),
                fields=("team", "scope", "name"),
                name="secret_name_unique_in_scope",
            ),
        ),
        migrations.AddConstraint(
            model_name="secret",
            constraint=models.UniqueConstraint(
                condition=models.Q(environment__isnull=False),
                fields=("environment", "name"),
                name="secret_name_unique_in_environment",
            ),
        ),
        migrations.AddConstraint(
            model_name="secret",
            constraint=models.CheckConstraint(
                condition=models.Q(scope__in=["dev", "staging", "prod"]),
                name="secret_scope_valid",
            ),
        ),
    ]
