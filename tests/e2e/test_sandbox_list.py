"""`GET /api/sandbox` as both SDKs' `list()` use it: cursor pages (`nextCursor`), filters by
state, labels, name and resources, sort and order; unknown parameters and values are a 400
naming them. Plus a short flow in the shape of Daytona's pagination example: tag a fleet,
walk it page by page, stop the idle part and list what is left running."""

import time
import urllib.parse
from datetime import datetime, timezone

import pytest
from daytona import (
    CreateSandboxFromSnapshotParams,
    ListSandboxesQuery,
    SandboxListSortDirection,
    SandboxListSortField,
)
from daytona import SandboxState as SdkSandboxState

from tsrun import run_ts


@pytest.fixture
def fleet(busybox_default):
    """Five sandboxes: web-1..3 (tier=web), db-1..2 (tier=db); db-2 and web-3 stopped."""
    server, daytona = busybox_default("list-snap")
    made = {}
    for name, tier in [("web-1", "web"), ("db-1", "db"), ("web-2", "web"), ("db-2", "db"), ("web-3", "web")]:
        made[name] = daytona.create(CreateSandboxFromSnapshotParams(name=name, labels={"tier": tier, "fleet": "f1"}))
        time.sleep(0.01)  # distinct creation times
    made["db-2"].stop()
    made["web-3"].stop()
    return server, daytona, made


def names(sandboxes):
    return [s.name for s in sandboxes]


def test_the_python_sdk_pages_filters_and_sorts_the_list(fleet):
    server, daytona, made = fleet
    # Raw pages first: limit 2 of 5 gives three pages chained by nextCursor.
    pages, cursor = [], None
    while True:
        path = "/sandbox?limit=2&sort=name&order=asc" + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else "")
        st, page = server.api("GET", path)
        assert st == 200, page
        pages.append([s["name"] for s in page["items"]])
        cursor = page.get("nextCursor")
        if not cursor:
            break
    assert pages == [["db-1", "db-2"], ["web-1", "web-2"], ["web-3"]], pages

    # The SDK walks the same pages itself.
    q = ListSandboxesQuery(limit=2, sort=SandboxListSortField.NAME, order=SandboxListSortDirection.ASC)
    assert names(daytona.list(q)) == ["db-1", "db-2", "web-1", "web-2", "web-3"]
    # Default order: newest first.
    assert names(daytona.list(ListSandboxesQuery(limit=2))) == ["web-3", "db-2", "web-2", "db-1", "web-1"]

    stopped = daytona.list(ListSandboxesQuery(limit=1, states=[SdkSandboxState.STOPPED],
                                              sort=SandboxListSortField.NAME, order=SandboxListSortDirection.ASC))
    assert names(stopped) == ["db-2", "web-3"]
    started_web = daytona.list(ListSandboxesQuery(limit=1, states=[SdkSandboxState.STARTED], labels={"tier": "web"}))
    assert sorted(names(started_web)) == ["web-1", "web-2"]
    both = daytona.list(ListSandboxesQuery(states=[SdkSandboxState.STARTED, SdkSandboxState.STOPPED], labels={"tier": "db"}))
    assert sorted(names(both)) == ["db-1", "db-2"]
    assert sorted(names(daytona.list(ListSandboxesQuery(name="WEB-")))) == ["web-1", "web-2", "web-3"]
    assert names(daytona.list(ListSandboxesQuery(id=made["db-1"].id[:8]))) == ["db-1"]
    assert len(list(daytona.list(ListSandboxesQuery(min_cpu=1, max_cpu=1, is_public=False, snapshots=["list-snap"])))) == 5
    assert list(daytona.list(ListSandboxesQuery(min_cpu=2))) == []
    assert list(daytona.list(ListSandboxesQuery(is_recoverable=True))) == []
    assert len(list(daytona.list(ListSandboxesQuery(created_at_after=datetime(2020, 1, 1, tzinfo=timezone.utc))))) == 5
    assert list(daytona.list(ListSandboxesQuery(created_at_before=datetime(2020, 1, 1, tzinfo=timezone.utc)))) == []
    recent = list(daytona.list(ListSandboxesQuery(sort=SandboxListSortField.LASTACTIVITYAT)))
    assert len(recent) == 5
    for s in made.values():
        s.delete()


def test_unknown_list_parameters_and_values_are_refused_naming_them(fleet):
    server, _, _ = fleet
    for query, named in [
        ("colour=red", "colour"),
        ("states=sleeping", "sleeping"),
        ("sort=size", "size"),
        ("order=sideways", "sideways"),
        ("limit=0", "limit"),
        ("cursor=bogus", "cursor"),
        ("minCpu=lots", "minCpu"),
        ("createdAtAfter=yesterday", "createdAtAfter"),
        ("autoDestroyAtAfter=2030-01-01T00:00:00Z", "autoDestroyAtAfter"),
    ]:
        st, body = server.api("GET", f"/sandbox?{query}")
        assert st == 400 and named in body["message"], (query, body)


def test_the_typescript_sdk_pages_and_filters_the_list(fleet):
    server, _, _ = fleet
    r = run_ts("list_paging.mjs", server, timeout=120)
    assert r["byName"] == ["db-1", "db-2", "web-1", "web-2", "web-3"], r
    assert r["stopped"] == ["db-2", "web-3"], r
    assert r["startedWeb"] == ["web-1", "web-2"], r
    assert r["bad"] and "sleeping" in r["bad"], r
    # The example flow: the idle part of the fleet stopped, what is left running listed.
    assert r["stillRunning"] == ["web-1"], r
