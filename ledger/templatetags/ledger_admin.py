"""Admin template tags for tables too big for Django's defaults."""

from __future__ import annotations

import calendar
import datetime

from django import template
from django.contrib.admin.templatetags.admin_list import date_hierarchy
from django.utils import formats, timezone
from django.utils.text import capfirst

register = template.Library()


@register.inclusion_tag("admin/date_hierarchy.html")
def calendar_date_hierarchy(cl) -> dict:
    """Django's date drill-down, with the choices taken from the calendar, not from the rows.

    Django lists the years, months or days that have rows with a SELECT DISTINCT over every
    matching row: seconds on a million attempts. Here two index lookups (the first and the
    last matching date) bound the range and every year, month or day inside it is offered,
    including a day that happens to have no attempt. Picking a day is left to Django.
    """
    field = cl.date_hierarchy
    year = cl.params.get(f"{field}__year")
    month = cl.params.get(f"{field}__month")
    if cl.params.get(f"{field}__day") or not cl.date_hierarchy:
        return date_hierarchy(cl)  # a single day: Django queries nothing more

    # The first and last rows by id: every filter's index ends in the id, so each is one index
    # lookup. Ids grow with time (an attempt is inserted when it ends, a few ms after it
    # starts), so their dates bound the range to within those milliseconds.
    rows = cl.queryset.order_by()
    first = rows.order_by("pk").values_list(field, flat=True).first()
    last = rows.order_by("-pk").values_list(field, flat=True).first()
    if first is None:
        return {"show": False}
    first, last = timezone.localtime(first), timezone.localtime(last)
    if not year and first.year == last.year:
        year = first.year
        month = first.month if first.month == last.month else month
    field_generic = f"{field}__"

    def link(filters: dict) -> str:
        return cl.get_query_string(filters, [field_generic])

    def keys(**values) -> dict:
        return {f"{field}__{name}": value for name, value in values.items()}

    if year and month:
        year, month = int(year), int(month)
        days = (
            range(first.day, last.day + 1)
            if (first.year, first.month) == (last.year, last.month)
            else range(1, calendar.monthrange(year, month)[1] + 1)
        )
        choices = [datetime.date(year, month, day) for day in days]
        return {
            "show": True,
            "back": {"link": link(keys(year=year)), "title": str(year)},
            "choices": [
                {"link": link(keys(year=year, month=month, day=d.day)),
                 "title": capfirst(formats.date_format(d, "MONTH_DAY_FORMAT"))}
                for d in choices
            ],
        }  # fmt: skip
    if year:
        year = int(year)
        months = range(first.month, last.month + 1) if first.year == last.year else range(1, 13)
        return {
            "show": True,
            "back": {"link": link({}), "title": "All dates"},
            "choices": [
                {"link": link(keys(year=year, month=m)),
                 "title": capfirst(formats.date_format(datetime.date(year, m, 1), "YEAR_MONTH_FORMAT"))}
                for m in months
            ],
        }  # fmt: skip
    return {
        "show": True,
        "back": None,
        "choices": [{"link": link(keys(year=y)), "title": str(y)} for y in range(first.year, last.year + 1)],
    }
