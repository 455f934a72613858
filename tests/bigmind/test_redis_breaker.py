"""The Redis cache's circuit breaker: a hung cache costs one time-out per window, not one per call.

A "hung Redis" is a socket that accepts connections and never answers (as a SIGSTOPped or
black-holed server does); tests/reliability does the same with a real Redis under load.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import redis

from bigmind.redis import CacheCircuitOpen, RedisCache, cache_breakers_reset


@pytest.fixture(autouse=True)
def _closed_breakers() -> Iterator[None]:
    cache_breakers_reset()
    yield
    cache_breakers_reset()


@pytest.fixture
def hung_server() -> Iterator[int]:
    """A listening socket nobody reads from: connects succeed, every reply times out."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def cache_on(port: int, break_seconds: float) -> RedisCache:
    return RedisCache(
        f"redis://127.0.0.1:{port}/0",
        {
            "OPTIONS": {
                "socket_connect_timeout": 0.2,
                "socket_timeout": 0.2,
                "circuit_break_seconds": break_seconds,
            }
        },
    )


def timed(call) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        call()
    except Exception as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


def test_after_one_time_out_the_next_calls_fail_at_once(hung_server: int) -> None:
    cache = cache_on(hung_server, break_seconds=30)
    first, error = timed(lambda: cache.get("k"))
    assert isinstance(error, redis.exceptions.TimeoutError) and first >= 0.19
    for call in (lambda: cache.get("k"), lambda: cache.add("k", 1, 5), lambda: cache.incr("k")):
        seconds, error = timed(call)
        assert isinstance(error, CacheCircuitOpen)
        assert seconds < 0.15  # not another 0.2 s time-out


def test_the_cache_is_tried_again_once_the_window_has_passed(hung_server: int) -> None:
    cache = cache_on(hung_server, break_seconds=0.3)
    timed(lambda: cache.get("k"))
    time.sleep(0.35)
    seconds, error = timed(lambda: cache.get("k"))
    assert isinstance(error, redis.exceptions.TimeoutError) and seconds >= 0.19


def test_without_a_window_every_call_waits_for_its_own_time_out(hung_server: int) -> None:
    cache = cache_on(hung_server, break_seconds=0)
    timed(lambda: cache.get("k"))
    seconds, error = timed(lambda: cache.get("k"))
    assert isinstance(error, redis.exceptions.TimeoutError) and seconds >= 0.19


def test_a_circuit_open_error_is_a_connection_error_callers_already_handle() -> None:
    # The lookup cache, rate limits and backpressure catch the cache's exceptions broadly;
    # redis-py's ConnectionError family is what they see from a down Redis too.
    assert issubclass(CacheCircuitOpen, redis.exceptions.ConnectionError)


@pytest.mark.redis
def test_a_working_cache_is_not_affected(settings) -> None:
    url = settings.REDIS_URL
    if not url:
        pytest.skip("needs REDIS_URL")
    cache = RedisCache(url, {"OPTIONS": {"circuit_break_seconds": 30}, "KEY_PREFIX": "breaker"})
    cache.set("k", 1, 5)
    assert cache.incr("k") == 2
    with pytest.raises(ValueError):
        cache.incr("missing")  # Django's contract, not a connection failure
    assert cache.get("k") == 2
    cache.delete("k")


def test_the_window_is_shared_by_every_thread_of_the_process(hung_server: int) -> None:
    """Django gives each thread its own cache object; one time-out must open them all."""
    import threading

    timed(lambda: cache_on(hung_server, break_seconds=30).get("k"))
    seen: list[BaseException | None] = []
    thread = threading.Thread(
        target=lambda: seen.append(timed(lambda: cache_on(hung_server, 30).get("k"))[1])
    )
    thread.start()
    thread.join()
    assert isinstance(seen[0], CacheCircuitOpen)
