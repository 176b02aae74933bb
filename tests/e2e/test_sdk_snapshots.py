"""The seed's snapshot snippets, run through the official Daytona Python SDK (unmodified)
against a real `cove server` pulling from a real registry."""

import pytest
from daytona import (
    CreateSnapshotParams,
    Daytona,
    DaytonaBadRequestError,
    DaytonaConfig,
    DaytonaConflictError,
    DaytonaError,
    DaytonaNotFoundError,
    Resources,
)
from daytona_api_client.models.snapshot_state import SnapshotState

from harness import API_KEY, BUSYBOX, BUSYBOX_2, FIXTURES, wait_until


def sdk(server, **kw):
    return Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url, **kw))


def test_the_seed_snippet_creates_an_active_snapshot_with_default_resources(server):
    daytona = sdk(server)
    snapshot = daytona.snapshot.create(CreateSnapshotParams(name="my-awesome-snapshot", image=BUSYBOX))
    assert snapshot.state == SnapshotState.ACTIVE
    assert snapshot.name == "my-awesome-snapshot"
    assert snapshot.image_name == BUSYBOX
    assert (snapshot.cpu, snapshot.mem, snapshot.disk, snapshot.gpu) == (1, 1, 3, 0)
    assert snapshot.entrypoint == ["sleep", "infinity"]
    assert snapshot.size and snapshot.size > 0
    assert snapshot.region_ids == ["us"]


def test_on_logs_receives_the_state_progression(server):
    daytona = sdk(server)
    lines = []
    daytona.snapshot.create(
        CreateSnapshotParams(name="logged", image=BUSYBOX),
        on_logs=lambda chunk: lines.append(chunk),
    )
    assert any("Creating snapshot logged" in line and "PENDING" in line for line in lines), lines
    assert lines[-1].startswith("Created snapshot logged") and "ACTIVE" in lines[-1], lines


def test_resources_are_echoed_back(server):
    snap = sdk(server).snapshot.create(
        CreateSnapshotParams(name="sized", image=BUSYBOX, resources=Resources(cpu=2, memory=4, disk=8))
    )
    assert (snap.cpu, snap.mem, snap.disk) == (2, 4, 8)


def test_a_region_can_be_chosen_and_an_unknown_one_is_refused(server):
    daytona = sdk(server)
    snap = daytona.snapshot.create(CreateSnapshotParams(name="in-eu", image=BUSYBOX, region_id="eu"))
    assert snap.region_ids == ["eu"]
    with pytest.raises(DaytonaNotFoundError, match="mars"):
        daytona.snapshot.create(CreateSnapshotParams(name="on-mars", image=BUSYBOX, region_id="mars"))


def test_the_client_target_is_the_default_region(server):
    snap = sdk(server, target="us-east-1").snapshot.create(CreateSnapshotParams(name="targeted", image=BUSYBOX))
    assert snap.region_ids == ["us-east-1"]


def test_get_by_name_and_a_missing_name_is_not_found(server):
    daytona = sdk(server)
    created = daytona.snapshot.create(CreateSnapshotParams(name="fetch-me", image=BUSYBOX))
    got = daytona.snapshot.get("fetch-me")
    assert got.id == created.id and got.state == SnapshotState.ACTIVE
    with pytest.raises(DaytonaNotFoundError):
        daytona.snapshot.get("does-not-exist")


def test_list_paginates_like_the_seed(server):
    for i in range(23):
        st, body = server.api("POST", "/snapshots", {"name": f"page-{i:02d}", "imageName": BUSYBOX})
        assert st == 200, body
    page = sdk(server).snapshot.list(page=2, limit=10)
    assert (page.total, page.page, page.total_pages) == (23, 2, 3)
    assert len(page.items) == 10
    page3 = sdk(server).snapshot.list(page=3, limit=10)
    everything = {s.name for s in sdk(server).snapshot.list(page=1, limit=100).items}
    assert len(page3.items) == 3
    assert len(everything) == 23
    assert not {s.name for s in page.items} & {s.name for s in page3.items}


def test_activate_is_harmless_on_active_and_revives_an_inactive_snapshot(server):
    daytona = sdk(server)
    daytona.snapshot.create(CreateSnapshotParams(name="sleepy", image=BUSYBOX))
    assert daytona.snapshot.activate("sleepy").state == SnapshotState.ACTIVE
    snap = daytona.snapshot.get("sleepy")
    st, _ = server.api("POST", f"/snapshots/{snap.id}/deactivate")
    assert st == 204
    assert daytona.snapshot.get("sleepy").state == SnapshotState.INACTIVE
    assert daytona.snapshot.activate("sleepy").state == SnapshotState.ACTIVE
    assert daytona.snapshot.get("sleepy").last_used_at is not None


def test_delete_removes_the_snapshot_and_frees_its_image(server):
    daytona = sdk(server)
    daytona.snapshot.create(CreateSnapshotParams(name="doomed", image=BUSYBOX_2))
    images = server.data_dir / "images"
    assert len(list(images.iterdir())) == 1
    daytona.snapshot.delete(daytona.snapshot.get("doomed"))
    with pytest.raises(DaytonaNotFoundError):
        daytona.snapshot.get("doomed")
    wait_until(lambda: not list(images.iterdir()), 10, what="the image to be garbage collected")
    wait_until(lambda: not list((server.data_dir / "blobs" / "sha256").iterdir()), 10, what="blobs to be freed")


def test_floating_tags_and_untagged_images_are_refused_with_the_reason(server):
    # Refused before any pull: Docker Hub's names stand for what users type.
    daytona = sdk(server)
    for tag in ("latest", "lts", "stable"):
        with pytest.raises(DaytonaBadRequestError, match=f'"{tag}"'):
            daytona.snapshot.create(CreateSnapshotParams(name=f"floating-{tag}", image=f"python:{tag}"))
    with pytest.raises(DaytonaBadRequestError, match="must include a tag"):
        daytona.snapshot.create(CreateSnapshotParams(name="untagged", image="ubuntu"))


def test_a_duplicate_name_is_a_conflict(server):
    daytona = sdk(server)
    daytona.snapshot.create(CreateSnapshotParams(name="twice", image=BUSYBOX))
    with pytest.raises(DaytonaConflictError, match="already exists"):
        daytona.snapshot.create(CreateSnapshotParams(name="twice", image=BUSYBOX))


def test_a_missing_image_fails_with_a_readable_reason(server):
    with pytest.raises(DaytonaError, match="not found"):
        sdk(server).snapshot.create(CreateSnapshotParams(name="ghost", image=f"{FIXTURES}/busybox:0.0.0-nope"))
    snap = sdk(server).snapshot.get("ghost")
    assert snap.state == SnapshotState.ERROR
    assert f"image {FIXTURES}/busybox:0.0.0-nope not found" in snap.error_reason, snap.error_reason
