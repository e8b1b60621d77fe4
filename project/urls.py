"""URL configuration: the admin is the main user interface."""

from django.contrib import admin
from django.urls import path

from ledger import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("health/", views.health, name="health"),
]

# Landing page, the admin index's live panel and the visualizers (admin and visualizer issue).
urlpatterns += [
    path("", views.landing, name="landing"),
    path("live/status/", views.live_status, name="live-status"),
    path("visualize/", views.visualize_index, name="visualize-index"),
    path("visualize/runs/<int:run_id>/", views.visualize_run, name="visualize-run"),
    path("visualize/accounts/<int:account_id>/", views.visualize_account, name="visualize-account"),
    path("visualize/compare/", views.compare, name="visualize-compare"),
]
