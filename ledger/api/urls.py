from __future__ import annotations

from django.urls import path
from rest_framework.routers import DefaultRouter

from ledger.api import views

app_name = "api"

router = DefaultRouter()
router.register("accounts", views.AccountViewSet, basename="account")
router.register("attempts", views.AttemptViewSet, basename="attempt")
router.register("runs", views.RunViewSet, basename="run")

urlpatterns = [
    path("accounts/<int:account_id>/deductions/", views.DeductionView.as_view(), name="deductions"),
    path("strategies/", views.StrategyListView.as_view(), name="strategies"),
    *router.urls,
]
