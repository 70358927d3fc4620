"""Per-host virtualisation detection. The old ``virt_type`` column becomes the
operator's override, so an existing host keeps the type it had."""

from django.db import migrations, models

import cloud.models

VIRT_TYPE_CHOICES = [("kvm", "KVM"), ("qemu", "QEMU TCG (emulated)")]


class Migration(migrations.Migration):
    dependencies = [
        ("cloud", "0006_deployment_targets"),
    ]

    operations = [
        migrations.RemoveConstraint(model_name="host", name="host_virt_type_valid"),
        migrations.RenameField(
            model_name="host", old_name="virt_type", new_name="virt_type_override"
        ),
        migrations.AlterField(
            model_name="host",
            name="virt_type_override",
            field=models.CharField(
                blank=True,
                choices=VIRT_TYPE_CHOICES,
                default="",
                help_text="Blank: use the detected type.",
                max_length=4,
            ),
        ),
        migrations.AddField(
            model_name="host",
            name="detected_virt_type",
            field=models.CharField(
                blank=True, choices=VIRT_TYPE_CHOICES, default="", editable=False, max_length=4
            ),
        ),
        migrations.AddField(
            model_name="host",
            name="virt_type_reason",
            field=models.TextField(blank=True, default="", editable=False),
        ),
        migrations.AddField(
            model_name="host",
            name="virt_checked_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="host",
            name="cpu_mode",
            field=models.CharField(
                default=cloud.models.default_cpu_mode,
                help_text="The guest CPU on KVM: host-passthrough, or a libvirt CPU model name.",
                max_length=64,
                validators=[cloud.models.cpu_mode_name],
            ),
        ),
        migrations.AddConstraint(
            model_name="host",
            constraint=models.CheckConstraint(
                condition=models.Q(virt_type_override__in=["", "kvm", "qemu"]),
                name="host_virt_type_override_valid",
            ),
        ),
        migrations.AddConstraint(
            model_name="host",
            constraint=models.CheckConstraint(
                condition=models.Q(detected_virt_type__in=["", "kvm", "qemu"]),
                name="host_detected_virt_type_valid",
            ),
        ),
    ]
