"""`make test` relies on pytest-xdist's `--dist loadgroup` to keep each `xdist_group` on one
worker (the fault suite's private stack, the real Celery workers, the modules with a
module-scoped server). xdist does it by suffixing the test's node id with `@<group>`; with a
pytest that ignores the suffix the groups silently spread over every worker (pytest 9.2 with
xdist 3.8), so this checks that the suffix took."""

from __future__ import annotations

import pytest

from tests.harness import xdist_worker

pytestmark = pytest.mark.xdist_group("xdist-groups-check")


def test_a_grouped_test_carries_its_group_under_loadgroup(request: pytest.FixtureRequest) -> None:
    if not xdist_worker():
        pytest.skip("not under pytest-xdist")
    # Inside a worker xdist sets `dist` to "no" and keeps the choice in `loadgroup`.
    if not request.config.getvalue("loadgroup"):
        pytest.skip("pytest-xdist without --dist loadgroup")
    assert request.node.nodeid.endswith("@xdist-groups-check"), request.node.nodeid
