"""URL configuration: the admin is the main user interface."""

from django.contrib import admin
from django.urls import path

from ledger import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("health/", views.health, name="health"),
]
