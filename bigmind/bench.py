"""Benchmark-only endpoint: the cost of Django itself, as the baseline for POST /v1/events.

`bare_ingest` reads the body, decodes it with `json.loads` and answers 202 in the API's
envelope: the same gunicorn, middleware stack and JSON work as the real ingest path, without
authentication, cache lookups, rate limiting, the database or the broker. It is routed at
/bench/bare only when BIGMIND_BENCHMARK_ENDPOINTS is true (see scripts/bench_ingest.py and
docs/benchmarks.md); production never exposes it.
"""

from __future__ import annotations

import json

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST


@csrf_exempt
@require_POST
def bare_ingest(request: HttpRequest) -> JsonResponse:
    try:
        payload = json.loads(request.body)
    except ValueError:
        return JsonResponse(
            {"success": False, "error": "Request body is not valid JSON", "code": "invalid_json"},
            status=400,
        )
    if not isinstance(payload, dict):
        payload = {}
    return JsonResponse(
        {
            "success": True,
            "data": {"signal": payload.get("signal"), "reference": payload.get("reference")},
        },
        status=202,
    )
