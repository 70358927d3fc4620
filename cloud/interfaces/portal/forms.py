"""Portal forms.  They parse what a browser sends into the types the services
take, and check the shape of names so every field's error shows at once; the
services own the rules (uniqueness, quota, states) and their ValidationError
is put back onto the form field it names."""

import re

from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator

from cloud.interfaces.healthspec import parse_health
from cloud.models import Environment, Flavor, Image
from cloud.services.environments import MAX_VMS_PER_REQUEST
from tenants.models import slug_name


def show_service_errors(form: forms.Form, error: ValidationError) -> None:
    """Put a service's errors next to the fields they name; the rest above the form."""
    messages = error.message_dict if hasattr(error, "error_dict") else {None: error.messages}
    for name, field_messages in messages.items():
        target = name if name in form.fields else None
        for message in field_messages:
            form.add_error(target, message)


ASCII_INTEGER = re.compile(r"-?[0-9]+")


class WholeNumberField(forms.IntegerField):
    """ASCII digits only: ``int()`` alone takes "٨٠" as 80, "1_0" as 10, "2.0" as 2."""

    def to_python(self, value):
        if value not in self.empty_values and not ASCII_INTEGER.fullmatch(str(value)):
            raise ValidationError(self.error_messages["invalid"], code="invalid")
        return super().to_python(value)


def name_field(**kwargs) -> forms.CharField:
    """A Strata name, checked exactly as typed (blanks around it are an error,
    not trimmed away, like everywhere else names are taken)."""
    return forms.CharField(max_length=40, strip=False, validators=[slug_name], **kwargs)


class NameChoiceField(forms.ModelChoiceField):
    """A catalogue row picked by its name (the services take names)."""

    def __init__(self, queryset, **kwargs):
        super().__init__(queryset, to_field_name="name", empty_label=None, **kwargs)

    def clean(self, value):
        row = super().clean(value)
        return row.name if row is not None else None


class CreateEnvironmentForm(forms.Form):
    name = name_field(help_text="Lowercase letters, digits and inner hyphens, e.g. shop-dev.")
    kind = forms.ChoiceField(choices=Environment.Kind.choices)
    vm_count = WholeNumberField(
        label="Number of VMs", min_value=1, max_value=MAX_VMS_PER_REQUEST, initial=1
    )
    flavor = NameChoiceField(Flavor.objects.all())
    image = NameChoiceField(Image.objects.all())
    egress = forms.ChoiceField(
        choices=Environment.Egress.choices,
        initial=Environment.Egress.ISOLATED,
        required=False,
        help_text="Traffic beyond the environment's own network: none, NAT or routed.",
    )

    def clean_egress(self):
        # Left out (an older page, a script): the service's default, isolated.
        return self.cleaned_data["egress"] or None


class DestroyEnvironmentForm(forms.Form):
    confirm_name = forms.CharField(
        label="Type the environment's name to confirm", max_length=40, strip=False
    )

    def __init__(self, *args, environment: Environment, **kwargs):
        super().__init__(*args, **kwargs)
        self.environment = environment

    def clean_confirm_name(self):
        typed = self.cleaned_data["confirm_name"]
        if typed != self.environment.name:
            raise ValidationError(f"Type {self.environment.name} to destroy this environment.")
        return typed


class SnapshotForm(forms.Form):
    snapshot = name_field(label="Snapshot name")


class ResizeForm(forms.Form):
    flavor = NameChoiceField(Flavor.objects.all(), label="New flavor")


# The form each VM action reads its parameters from (start, stop, reboot take none).
VM_ACTION_FORMS = {
    "snapshot": SnapshotForm,
    "revert": SnapshotForm,
    "delete_snapshot": SnapshotForm,
    "resize": ResizeForm,
}


PORT_TEXT = re.compile(r"[0-9]{1,5}")


CLEAR = "none"  # typed into an optional deploy field: set it to nothing


def ports_from_text(text: str) -> list[int]:
    ports = []
    for part in text.replace(",", " ").split():
        if not PORT_TEXT.fullmatch(part):
            raise ValidationError(f"{part!r} is not a port number")
        ports.append(int(part))
    return ports


class DeployForm(forms.Form):
    """A deploy from the portal: a field left empty keeps the service's current
    value (the default for a new service); "none" clears ports or the check."""

    service_name = name_field(label="Service")
    image = forms.CharField(
        max_length=255, strip=False, help_text="An image reference, e.g. nginx:1.27"
    )
    replicas = WholeNumberField(
        min_value=0,
        max_value=100,
        required=False,
        help_text="Empty: as now (1 for a new service)",
    )
    ports = forms.CharField(
        required=False,
        max_length=200,
        help_text="Container ports to publish, e.g. 80 443; empty: as now; none: no ports",
    )

    healthcheck = forms.CharField(
        label="Health check",
        required=False,
        strip=False,
        max_length=200,
        help_text="http:/path:PORT, tcp:PORT or cmd:ARG,ARG; empty: as now; "
        "none: running is healthy",
    )

    def clean_ports(self):
        text = self.cleaned_data["ports"]
        if not text:
            return None
        return [] if text == CLEAR else ports_from_text(text)

    def clean_healthcheck(self):
        text = self.cleaned_data["healthcheck"]
        if not text:
            return None
        if text == CLEAR:
            return {}
        try:
            return parse_health(text)
        except ValueError as exc:
            raise ValidationError(str(exc)) from exc

    def mentioned(self) -> dict:
        """The cleaned fields the person filled in: the others are kept as they are."""
        return {name: value for name, value in self.cleaned_data.items() if value is not None}


class ScaleForm(forms.Form):
    replicas = WholeNumberField(min_value=0, max_value=100)


class PromoteForm(forms.Form):
    target_env = forms.ChoiceField(label="Promote to")

    def __init__(self, *args, targets: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["target_env"].choices = [(name, name) for name in targets]


class TokenForm(forms.Form):
    name = forms.CharField(
        max_length=60,
        strip=False,
        help_text="What it is for, e.g. “CI deploys”.",
        validators=[
            RegexValidator(r"\A[\w .,:()/-]{1,60}\Z", "Letters, digits, spaces and .,:()/- only.")
        ],
    )
