from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/dashboard/", include(("events_app.dashboard", "dashboard"))),
    path("admin/", admin.site.urls),
    path("v1/", include("events_app.api.urls")),
]

if settings.BIGMIND_BENCHMARK_ENDPOINTS:  # scripts/bench_ingest.py only; off by default
    from bigmind.bench import bare_ingest, bare_insert_ingest

    urlpatterns.append(path("bench/bare", bare_ingest))
    urlpatterns.append(path("bench/bare-insert", bare_insert_ingest))

handler400 = "bigmind.errors.handler400"
handler404 = "bigmind.errors.handler404"
handler500 = "bigmind.errors.handler500"
