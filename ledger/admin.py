"""The Django admin: the main user interface. Records are read-only; money moves through services."""

from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode

from ledger import forms, services, views
from ledger.attack.report import format_value
from ledger.errors import InvalidRequest
from ledger.models import Account, AttackRun, BalanceAdjustment, DeductionAttempt, Outcome
from ledger.selectors import success_rate
from strategies import registry

OUTCOME_COLOURS = {
    Outcome.SUCCEEDED: "#1e7e34",
    Outcome.INSUFFICIENT_FUNDS: "#6c757d",
    Outcome.CONFLICT: "#b8860b",
    Outcome.LOCK_TIMEOUT: "#c05600",
    Outcome.ERROR: "#b02a37",
}


def outcome_badge(outcome: str) -> str:
    return format_html(
        '<span class="zbl-badge" style="background:{}" title="{}">{}</span>',
        OUTCOME_COLOURS.get(outcome, "#444"),
        Outcome(outcome).label if outcome in Outcome.values else outcome,
        outcome.replace("_", " "),
    )


def money(value: int | None) -> str:
    return format_value("money", value)


def arrow(before: int | None, after: int | None) -> str:
    return f"{money(before)} → {money(after)}"


def micros_as_ms(value: int | None) -> str:
    return "–" if value is None else f"{value / 1000:,.1f} ms"


def loss_html(loss: int | None) -> str:
    if loss is None:
        return "–"
    return format_html('<span class="{}">{}</span>', "zbl-loss" if loss else "zbl-no-loss", money(loss))


class CappedCountPaginator(Paginator):
    """Counts at most CAP rows, so a page of a million-row table never scans the whole table.

    COUNT(*) reads every row (InnoDB) or every index entry (SQLite) of the filtered set; a
    count of `SELECT id … LIMIT CAP+1` stops early. Past the cap the admin says "more than"
    and pages up to the cap: use the filters (run, strategy, outcome, date) to narrow down.
    """

    CAP = 10_000

    @cached_property
    def count(self) -> int:
        return self.object_list.order_by().values("pk")[: self.CAP + 1].count()

    @property
    def capped(self) -> bool:
        return self.count > self.CAP


class RecentChoicesFilter(admin.SimpleListFilter):
    """Filter by id; lists the most recent few plus the one selected (never the whole table)."""

    model: type
    field: str
    limit = 15

    def label_for(self, obj) -> str:
        return str(obj)

    def lookups(self, request, model_admin):
        recent = list(self.model.objects.order_by("-pk")[: self.limit])
        if self.value() and self.value().isdigit() and all(str(o.pk) != self.value() for o in recent):
            recent = list(self.model.objects.filter(pk=int(self.value()))) + recent
        return [(str(o.pk), self.label_for(o)) for o in recent]

    def queryset(self, request, queryset):
        if self.value():
            if not self.value().isdigit():
                return queryset.none()
            return queryset.filter(**{self.field: int(self.value())})
        return queryset


class RunFilter(RecentChoicesFilter):
    title = "attack run"
    parameter_name = "run"
    model = AttackRun
    field = "attack_run_id"


class AccountFilter(RecentChoicesFilter):
    title = "account"
    parameter_name = "account"
    model = Account
    field = "account_id"

    def label_for(self, obj) -> str:
        return obj.name


class StrategyFilter(admin.SimpleListFilter):
    """The registry's names: no DISTINCT over the attempts table to find them."""

    title = "strategy"
    parameter_name = "strategy"

    def lookups(self, request, model_admin):
        return [(name, name) for name in registry.names()]

    def queryset(self, request, queryset):
        return queryset.filter(strategy=self.value()) if self.value() else queryset


class InstanceFilter(admin.SimpleListFilter):
    title = "instance"
    parameter_name = "instance"
    limit = 50

    def lookups(self, request, model_admin):
        # DISTINCT over the attempt_instance index: an index-only scan, not a table scan.
        instances = DeductionAttempt.objects.order_by("instance_id").values_list("instance_id", flat=True).distinct()
        return [(name, name) for name in instances[: self.limit]]

    def queryset(self, request, queryset):
        return queryset.filter(instance_id=self.value()) if self.value() else queryset


class ReadOnly:
    """Audit records: viewable, never added, changed or deleted from the admin."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class ReadOnlyAdmin(ReadOnly, admin.ModelAdmin):
    pass


class AttemptColumns:
    """Columns an attempt shows wherever it is listed (its own changelist, an account's inline)."""

    @admin.display(description="outcome", ordering="outcome")
    def badge(self, obj: DeductionAttempt) -> str:
        return outcome_badge(obj.outcome)

    @admin.display(description="balance before → after")
    def balances(self, obj: DeductionAttempt) -> str:
        return arrow(obj.balance_before, obj.balance_after)

    @admin.display(description="version before → after")
    def versions(self, obj: DeductionAttempt) -> str:
        return arrow(obj.version_before, obj.version_after)


class RecentAttemptsFormSet(BaseInlineFormSet):
    shown = 20

    def get_queryset(self) -> QuerySet:
        # Evaluated once: the formset indexes into it for every form. Newest first along the
        # attempt_account_started index, whatever the number of attempts of the account.
        if not hasattr(self, "_recent"):
            self._recent = super().get_queryset().order_by("-started_at", "-pk")[: self.shown]
            len(self._recent)
        return self._recent


class RecentAttemptsInline(ReadOnly, AttemptColumns, admin.TabularInline):
    model = DeductionAttempt
    formset = RecentAttemptsFormSet
    verbose_name_plural = f"recent attempts (the last {RecentAttemptsFormSet.shown})"
    fields = ["attempt_link", "badge", "strategy", "amount", "balances", "versions", "retries", "started_at"]
    readonly_fields = fields
    can_delete = False
    extra = 0
    show_change_link = False

    @admin.display(description="attempt")
    def attempt_link(self, obj: DeductionAttempt) -> str:
        return format_html(
            '<a href="{}">#{}</a>', reverse("admin:ledger_deductionattempt_change", args=[obj.pk]), obj.pk
        )


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = ["name", "balance", "version", "opening_balance", "attempts", "last_activity", "visualize"]
    search_fields = ["name"]
    readonly_fields = ["balance", "version", "opening_balance", "created_at", "updated_at", "visualize", "audit"]
    inlines = [RecentAttemptsInline]
    actions = ["top_up", "reset_balance"]
    sortable_by = ["name", "balance", "version", "opening_balance"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # Per-row figures as subqueries of the page's own query (no query per row); both use
        # the attempt_account_* indexes.
        attempts = DeductionAttempt.objects.filter(account=OuterRef("pk")).order_by()
        return (
            super()
            .get_queryset(request)
            .annotate(
                attempt_count=Coalesce(Subquery(attempts.values("account").annotate(n=Count("pk")).values("n")), 0),
                last_attempt_at=Subquery(attempts.order_by("-started_at").values("started_at")[:1]),
            )
        )

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["name", "balance"]
        return ["name", "balance", "version", "opening_balance", "created_at", "updated_at", "audit", "visualize"]

    def get_inlines(self, request, obj=None):
        return self.inlines if obj is not None else []

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = forms.AccountAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.readonly_fields

    def save_model(self, request, obj: Account, form, change: bool) -> None:
        if change:
            # Only the name is editable; balance and version move through the services.
            Account.objects.filter(pk=obj.pk).update(name=obj.name)
            return
        obj.pk = services.open_account(name=obj.name, balance=obj.balance).pk
        obj.refresh_from_db()

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # attempts and adjustments refer to accounts forever (the audit needs them)

    @admin.display(description="attempts")
    def attempts(self, obj: Account) -> str:
        url = reverse("admin:ledger_deductionattempt_changelist") + "?" + urlencode({"account": obj.pk})
        return format_html('<a href="{}">{}</a>', url, money(getattr(obj, "attempt_count", None)))

    @admin.display(description="last activity")
    def last_activity(self, obj: Account):
        return getattr(obj, "last_attempt_at", None) or obj.updated_at

    @admin.display(description="visualizer")
    def visualize(self, obj: Account) -> str:
        return format_html('<a href="{}">timeline</a>', reverse("visualize-account", args=[obj.pk]))

    @admin.display(description="audit")
    def audit(self, obj: Account) -> str:
        [line] = services.audit(account_ids=[obj.pk])
        if line.ok:
            return format_html('<span class="zbl-no-loss">exact</span> (expected {})', money(line.expected_balance))
        return format_html(
            '<span class="zbl-loss">balance loss {}</span>: expected {}, balance {}',
            money(line.balance_loss),
            money(line.expected_balance),
            money(line.balance),
        )

    @admin.action(description="Top up selected accounts…")
    def top_up(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return self._adjust(request, queryset, forms.TopUpForm, "Top up", self._top_up)

    @admin.action(description="Reset the balance of selected accounts…")
    def reset_balance(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return self._adjust(request, queryset, forms.ResetBalanceForm, "Reset the balance of", self._reset)

    @staticmethod
    def _top_up(account_id: int, data: dict) -> None:
        services.top_up(account_id=account_id, amount=data["amount"], note=data["note"])

    @staticmethod
    def _reset(account_id: int, data: dict) -> None:
        services.reset_balance(account_id=account_id, balance=data["balance"], note=data["note"])

    def _adjust(self, request, queryset, form_class, title: str, apply) -> HttpResponse | None:
        """An action with an intermediate form; each change is a recorded BalanceAdjustment."""
        form = form_class(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            try:
                for account_id in queryset.values_list("pk", flat=True):
                    apply(account_id, form.cleaned_data)
            except InvalidRequest as invalid:
                forms.add_invalid_error(form, invalid)
            else:
                count = queryset.count()
                self.message_user(request, f"{title} {count} account(s): recorded as balance adjustments.")
                return None
        context = {
            **self.admin_site.each_context(request),
            "title": f"{title} {queryset.count()} account(s)",
            "opts": self.model._meta,
            "form": form,
            "accounts": queryset,
            "action": request.POST["action"],
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/ledger/account/adjust_balance.html", context)


@admin.register(DeductionAttempt)
class DeductionAttemptAdmin(AttemptColumns, ReadOnlyAdmin):
    list_display = [
        "id", "badge", "strategy", "amount", "balances", "versions", "retries", "lock_wait", "duration",
        "instance_id", "account_name", "run", "started_at",
    ]  # fmt: skip
    list_display_links = ["id"]
    list_filter = [StrategyFilter, "outcome", InstanceFilter, RunFilter, AccountFilter]
    # No JOIN: MariaDB plans `attempts JOIN accounts ORDER BY id DESC LIMIT 50` as a sort of
    # the whole join (4.6 s on a million rows). The page's accounts come in one extra query
    # (prefetch_related in get_queryset) instead.
    list_select_related = []
    search_fields = ["request_id", "idempotency_key"]
    search_help_text = "An exact request id or idempotency key."
    date_hierarchy = "started_at"
    list_per_page = 50
    paginator = CappedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    sortable_by = ["id"]
    fieldsets = [
        (None, {"fields": ["badge", "strategy", "amount", "think_ms", "account", "run", "visualize"]}),
        ("Balance and version", {"fields": ["balance_before", "balance_after", "version_before", "version_after"]}),
        ("Timeline", {"fields": ["started_at", "lock_acquired_at", "read_at", "written_at", "finished_at"]}),
        ("Contention", {"fields": ["lock_wait", "duration", "retries", "lock_expired", "steps"]}),
        ("Origin", {"fields": ["instance_id", "request_id", "idempotency_key", "error"]}),
    ]

    readonly_fields = [field for _, options in fieldsets for field in options["fields"]]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).prefetch_related("account")

    def get_search_results(self, request, queryset, search_term):
        # Exact matches on the unique request_id and the idempotency_key index; the default
        # icontains would read every row.
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(request_id=term) | queryset.filter(idempotency_key=term), False

    @admin.display(description="lock wait")
    def lock_wait(self, obj: DeductionAttempt) -> str:
        return micros_as_ms(obj.lock_wait_us)

    @admin.display(description="duration")
    def duration(self, obj: DeductionAttempt) -> str:
        return micros_as_ms(obj.duration_us)

    @admin.display(description="account")
    def account_name(self, obj: DeductionAttempt) -> str:
        url = reverse("admin:ledger_account_change", args=[obj.account_id])
        return format_html('<a href="{}">{}</a>', url, obj.account.name)

    @admin.display(description="events")
    def steps(self, obj: DeductionAttempt) -> str:
        return format_html_join(
            "",
            '<div class="zbl-step"><code>{} µs</code> {} <span class="quiet">{}</span></div>',
            (
                (
                    f"{e.get('t_us', 0):,}",
                    e.get("event", "?"),
                    ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("t_us", "event")),
                )
                for e in obj.events or []
            ),
        )

    @admin.display(description="run")
    def run(self, obj: DeductionAttempt) -> str:
        if obj.attack_run_id is None:
            return "–"
        url = reverse("admin:ledger_attackrun_change", args=[obj.attack_run_id])
        return format_html('<a href="{}">run {}</a>', url, obj.attack_run_id)

    @admin.display(description="visualizer")
    def visualize(self, obj: DeductionAttempt) -> str:
        if obj.attack_run_id is not None:
            url = reverse("visualize-run", args=[obj.attack_run_id])
        else:
            url = reverse("visualize-account", args=[obj.account_id])
        return format_html('<a href="{}#attempt-{}">show it on the timeline</a>', url, obj.pk)


@admin.register(AttackRun)
class AttackRunAdmin(admin.ModelAdmin):
    list_display = [
        "id", "strategy", "status", "target", "requests", "tps_display", "p50", "p99", "success", "loss",
        "started_at", "visualize",
    ]  # fmt: skip
    list_filter = ["status", "strategy"]
    actions = ["compare_selected"]
    readonly_fields = [f.name for f in AttackRun._meta.fields] + ["success", "loss", "visualize"]
    change_list_template = "admin/ledger/attackrun/change_list.html"

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # runs are measurements: started from "Launch attack", never typed in

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        # Deleting a run keeps its attempts (the audit stays exact); a running one is still writing.
        running = obj is not None and obj.status == AttackRun.Status.RUNNING
        return request.user.is_superuser and not running

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("launch/", wrap(self.launch_view), name="ledger_attackrun_launch"),
            path("launch/<str:launch_id>/", wrap(self.launch_progress_view), name="ledger_attackrun_launch_progress"),
            path("launch/<str:launch_id>/state/", wrap(views.launch_state), name="ledger_attackrun_launch_state"),
            *super().get_urls(),
        ]

    def _context(self, request: HttpRequest, title: str) -> dict:
        return {**self.admin_site.each_context(request), "title": title, "opts": self.model._meta}

    def launch_view(self, request: HttpRequest) -> HttpResponse:
        # Launching writes thousands of rows and loads the machine: superusers, or staff
        # given the "add attack run" permission.
        if not request.user.has_perm("ledger.add_attackrun"):
            raise PermissionDenied("Launching attacks needs the “Can add attack run” permission.")
        return views.launch(request, self._context(request, "Launch an attack"))

    def launch_progress_view(self, request: HttpRequest, launch_id: str) -> HttpResponse:
        return views.launch_progress(request, launch_id, self._context(request, "Attack launch"))

    @admin.action(description="Compare selected runs")
    def compare_selected(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse:
        ids = ",".join(str(pk) for pk in queryset.order_by("pk").values_list("pk", flat=True))
        return HttpResponseRedirect(reverse("visualize-compare") + "?" + urlencode({"runs": ids}))

    @admin.display(description="TPS", ordering="tps")
    def tps_display(self, obj: AttackRun) -> str:
        return format_value("tps", obj.tps)

    @admin.display(description="p50 ms", ordering="p50_ms")
    def p50(self, obj: AttackRun) -> str:
        return format_value("p50_ms", obj.p50_ms)

    @admin.display(description="p99 ms", ordering="p99_ms")
    def p99(self, obj: AttackRun) -> str:
        return format_value("p99_ms", obj.p99_ms)

    @admin.display(description="success rate")
    def success(self, obj: AttackRun) -> str:
        rate = success_rate(obj)
        return "–" if rate is None else f"{rate:.1f} %"

    @admin.display(description="balance loss", ordering="balance_loss")
    def loss(self, obj: AttackRun) -> str:
        return loss_html(obj.balance_loss)

    @admin.display(description="visualizer")
    def visualize(self, obj: AttackRun) -> str:
        return format_html('<a href="{}">timeline</a>', reverse("visualize-run", args=[obj.pk]))


@admin.register(BalanceAdjustment)
class BalanceAdjustmentAdmin(ReadOnlyAdmin):
    list_display = ["id", "account", "kind", "delta", "balances", "versions", "note", "instance_id", "created_at"]
    list_filter = ["kind"]
    list_select_related = ["account"]
    date_hierarchy = "created_at"

    @admin.display(description="balance before → after")
    def balances(self, obj: BalanceAdjustment) -> str:
        return arrow(obj.balance_before, obj.balance_after)

    @admin.display(description="version before → after")
    def versions(self, obj: BalanceAdjustment) -> str:
        return arrow(obj.version_before, obj.version_after)


admin.site.site_header = "Zero Balance Loss"
admin.site.site_title = "Zero Balance Loss"
admin.site.index_title = "Ledger administration"
admin.site.site_url = "/"
