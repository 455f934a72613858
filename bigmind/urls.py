from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from bigmind.errors import handler404 as api_not_found

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/dashboard/", include(("events_app.dashboard.urls", "dashboard"))),
    path("admin/", admin.site.urls),
    path("v1/", include("events_app.api.urls")),
    # "/v1" itself: the envelope's 404, not CommonMiddleware's APPEND_SLASH redirect to "/v1/".
    re_path(r"^v1$", api_not_found),
]

if settings.BIGMIND_BENCHMARK_ENDPOINTS:  # scripts/bench_ingest.py only; off by default
    from bigmind.bench import bare_ingest, bare_insert_ingest

    urlpatterns.append(path("bench/bare", bare_ingest))
    urlpatterns.append(path("bench/bare-insert", bare_insert_ingest))

handler400 = "bigmind.errors.handler400"
handler403 = "bigmind.errors.handler403"
handler404 = "bigmind.errors.handler404"
handler500 = "bigmind.errors.handler500"
