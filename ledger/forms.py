"""Forms of the admin's extra pages. Bounds live in the services and the engine, not here."""

from __future__ import annotations

from django import forms

from ledger.attack import launcher
from ledger.attack.engine import AttackPlan
from ledger.errors import InvalidRequest
from ledger.models import Account
from strategies import registry

ALL = "all"


def add_invalid_error(form: forms.Form, invalid: InvalidRequest, fields: dict[str, str] | None = None) -> None:
    """Show a service's InvalidRequest on the form field it concerns (or the whole form)."""
    field = (fields or {}).get(invalid.field, invalid.field)
    form.add_error(field if field in form.fields else None, invalid.message)


class LaunchAttackForm(forms.Form):
    defaults = AttackPlan(strategy="")

    mode = forms.ChoiceField(label="Strategy", initial=ALL, help_text="One strategy, or all of them one after another.")
    requests = forms.IntegerField(initial=defaults.requests, help_text="Deductions per strategy.")
    concurrency = forms.IntegerField(initial=defaults.concurrency, help_text="Concurrent workers.")
    processes = forms.IntegerField(
        initial=defaults.processes,
        help_text="Spread the workers over this many processes, each its own instance (mutex loses across them).",
    )
    amount = forms.IntegerField(initial=defaults.amount, help_text="Minor units (cents) per deduction.")
    balance = forms.IntegerField(initial=defaults.balance, help_text="Opening balance of each fresh account.")
    think_ms = forms.IntegerField(
        label="Think time (ms)", initial=defaults.think_ms, help_text="Delay between read and write: widens races."
    )
    url = forms.URLField(
        label="Against a URL",
        required=False,
        assume_scheme="http",
        help_text="Leave empty to attack in-process; or the base URL of a running instance (HTTP API).",
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["mode"].choices = [(ALL, "all strategies")] + [(name, name) for name in registry.names()]

    def clean(self) -> dict:
        data = super().clean()
        if self.errors:
            return data
        plans = [AttackPlan(strategy=name, **self.plan_parameters()) for name in self.strategies()]
        try:
            for plan in plans:
                plan.validate()
        except InvalidRequest as invalid:
            add_invalid_error(self, invalid, {"strategy": "mode"})
        return data

    def strategies(self) -> list[str]:
        mode = self.cleaned_data["mode"]
        return registry.names() if mode == ALL else [mode]

    def plan_parameters(self) -> dict[str, int]:
        return {option: self.cleaned_data[option] for option in launcher.PLAN_OPTIONS}

    def launch_request(self) -> launcher.LaunchRequest:
        return launcher.LaunchRequest(
            mode=self.cleaned_data["mode"], url=self.cleaned_data.get("url") or "", **self.plan_parameters()
        )


class TopUpForm(forms.Form):
    amount = forms.IntegerField(help_text="Minor units (cents) to add to each selected account.")
    note = forms.CharField(max_length=300, required=False)


class ResetBalanceForm(forms.Form):
    balance = forms.IntegerField(help_text="New balance of each selected account, minor units (cents).")
    note = forms.CharField(max_length=300, required=False)


class AccountAddForm(forms.ModelForm):
    """A new account: its name and opening balance (opened through services.open_account)."""

    class Meta:
        model = Account
        fields = ["name", "balance"]
        labels = {"balance": "Opening balance"}

    def clean_balance(self) -> int:
        balance = self.cleaned_data["balance"]
        if balance < 0:
            raise forms.ValidationError("must be a non-negative integer number of minor units (cents)")
        return balance
