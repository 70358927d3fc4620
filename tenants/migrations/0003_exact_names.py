# Names are matched whole (\A...\Z): "$" let a trailing newline through.

import django.core.validators
from django.db import migrations, models

SLUG_NAME = django.core.validators.RegexValidator(
    "\\A[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?\\Z",
    "Use 1-40 lowercase letters, digits and inner hyphens.",
)


class Migration(migrations.Migration):
    dependencies = [("tenants", "0002_api_tokens")]

    operations = [
        migrations.AlterField(
            model_name="team",
            name="name",
            field=models.CharField(max_length=40, unique=True, validators=[SLUG_NAME]),
        ),
    ]
