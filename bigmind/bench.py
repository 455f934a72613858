"""Benchmark-only endpoints: the baselines for POST /v1/events.

`bare_ingest` reads the body, decodes it with `json.loads` and answers 202 in the API's
envelope: the same gunicorn, middleware stack and JSON work as the real ingest path, without
authentication, cache lookups, rate limiting, the database or the broker.

`bare_insert_ingest` does the same and one autocommit INSERT of the body per request, on the
request thread's own connection (`BENCH_INSERT_TABLE`, created by scripts/bench_ingest.py):
what storing each request on its own costs, the way a plain view would.

They are routed at /bench/bare and /bench/bare-insert only when BIGMIND_BENCHMARK_ENDPOINTS
is true (see scripts/bench_ingest.py and docs/benchmarks.md); production never exposes them.
"""

from __future__ import annotations

import json

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

BENCH_INSERT_TABLE = "bench_insert"
BENCH_INSERT_DDL = (
    f"CREATE TABLE IF NOT EXISTS {BENCH_INSERT_TABLE} ("
    "id bigserial PRIMARY KEY, payload jsonb NOT NULL, received_at timestamptz NOT NULL)"
)


def _invalid_json() -> JsonResponse:
    return JsonResponse(
        {"success": False, "error": "Request body is not valid JSON", "code": "invalid_json"},
        status=400,
    )


@csrf_exempt
@require_POST
def bare_ingest(request: HttpRequest) -> JsonResponse:
    try:
        payload = json.loads(request.body)
    except ValueError:
        return _invalid_json()
    return _accepted(payload)


@csrf_exempt
@require_POST
def bare_insert_ingest(request: HttpRequest) -> JsonResponse:
    try:
        payload = json.loads(request.body)
    except ValueError:
        return _invalid_json()
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {BENCH_INSERT_TABLE} (payload, received_at) VALUES (%s, now())",  # noqa: S608
            [request.body.decode()],
        )
    return _accepted(payload)


def _accepted(payload: object) -> JsonResponse:
    if not isinstance(payload, dict):
        payload = {}
    return JsonResponse(
        {
            "success": True,
            "data": {"signal": payload.get("signal"), "reference": payload.get("reference")},
        },
        status=202,
    )
