"""An event's stored `result` as every reader shows it: the read API and webhook payloads."""

from __future__ import annotations

from typing import Any

from bigmind.api_time import iso_utc_text


def event_result_data(result: Any) -> Any:
    """An event's stored `result`, with its date-times in the API's `Z` form.

    Since issue #12 the pipeline writes them so (`bigmind.api_time.iso_utc`); results stored
    before it hold `+00:00`. Only the places the pipeline writes a date-time are rewritten
    (`rollup.metric.bucket_start`), never a string a processor or a client wrote elsewhere."""
    if not isinstance(result, dict):
        return result
    rollup = result.get("rollup")
    metric = rollup.get("metric") if isinstance(rollup, dict) else None
    if not isinstance(metric, dict) or not isinstance(metric.get("bucket_start"), str):
        return result
    assert isinstance(rollup, dict)
    metric = {**metric, "bucket_start": iso_utc_text(metric["bucket_start"])}
    return {**result, "rollup": {**rollup, "metric": metric}}
