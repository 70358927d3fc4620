# Names and checksums are matched whole (\A...\Z): "$" let a trailing newline through.

import django.core.validators
from django.db import migrations, models

SLUG_NAME = django.core.validators.RegexValidator(
    "\\A[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?\\Z",
    "Use 1-40 lowercase letters, digits and inner hyphens.",
)
SHA256_HEX = django.core.validators.RegexValidator(
    "\\A[0-9a-f]{64}\\Z", "A sha256 is 64 lowercase hex digits."
)


def name_field(**kwargs):
    return models.CharField(max_length=40, validators=[SLUG_NAME], **kwargs)


class Migration(migrations.Migration):
    dependencies = [("cloud", "0004_secret_scope"), ("tenants", "0003_exact_names")]

    operations = [
        *(
            migrations.AlterField(model_name=model, name="name", field=name_field(unique=True))
            for model in ("host", "image", "flavor")
        ),
        *(
            migrations.AlterField(model_name=model, name="name", field=name_field())
            for model in ("environment", "virtualmachine", "secret", "service")
        ),
        migrations.AlterField(
            model_name="image",
            name="sha256",
            field=models.CharField(max_length=64, validators=[SHA256_HEX]),
        ),
    ]
