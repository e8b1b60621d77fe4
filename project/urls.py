"""URL configuration: the admin is the main user interface."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from ledger import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("health/", views.health, name="health"),
    # HTTP API (issue 3): the API, its OpenAPI schema and the interactive docs (public).
    path("api/schema/", SpectacularAPIView.as_view(permission_classes=[]), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema", permission_classes=[]), name="api-docs"),
    path("api/", include("ledger.api.urls")),
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

# Prometheus metrics of this instance (metrics issue): restricted, see ledger.views.metrics.
urlpatterns += [path("metrics", views.metrics, name="metrics")]
# Benchmarks (issue 8): the bare HTTP ceiling; answers 404 unless settings.BENCH_HELLO_VIEW is on.
urlpatterns += [path("bench/hello/", views.bench_hello, name="bench-hello")]
