"""Jobs get a lease: the run that may execute their steps, renewed while it runs."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("cloud", "0002_vm_samples")]

    operations = [
        migrations.AddField(
            model_name="job",
            name="lease_token",
            field=models.UUIDField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="job",
            name="lease_owner",
            field=models.CharField(blank=True, editable=False, max_length=200),
        ),
        migrations.AddField(
            model_name="job",
            name="lease_expires_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.AddIndex(
            model_name="job",
            index=models.Index(
                fields=["team", "queue", "lease_expires_at"], name="job_team_queue_lease"
            ),
        ),
    ]
