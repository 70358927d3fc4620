import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("cloud", "0005_exact_names"),
    ]

    operations = [
        migrations.CreateModel(
            name="DeploymentTarget",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "outcome",
                    models.CharField(
                        choices=[
                            ("pending", "Pending"),
                            ("succeeded", "Succeeded"),
                            ("rolled_back", "Rolled Back"),
                            ("failed", "Failed"),
                            ("reverted", "Reverted"),
                            ("revert_failed", "Revert Failed"),
                        ],
                        default="pending",
                        max_length=14,
                    ),
                ),
                ("detail", models.TextField(blank=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
                (
                    "deployment",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="targets",
                        to="cloud.deployment",
                    ),
                ),
                (
                    "vm",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="deployments",
                        to="cloud.virtualmachine",
                    ),
                ),
            ],
            options={
                "ordering": ["deployment", "vm__name"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("deployment", "vm"), name="deployment_target_once"
                    ),
                    models.CheckConstraint(
                        condition=models.Q(
                            (
                                "outcome__in",
                                [
                                    "pending",
                                    "succeeded",
                                    "rolled_back",
                                    "failed",
                                    "reverted",
                                    "revert_failed",
                                ],
                            )
                        ),
                        name="deployment_target_outcome_valid",
                    ),
                ],
            },
        ),
    ]
