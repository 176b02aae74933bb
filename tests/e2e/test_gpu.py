"""GPU sandboxes through CDI, with the official Python SDK. No NVIDIA hardware: the server
reads a CDI spec the test writes, whose "GPU" is a character device with /dev/null's numbers
made by the test (root) outside the data dir."""

import os

import pytest
from daytona import (CreateSandboxFromSnapshotParams, CreateSnapshotParams, Daytona, DaytonaConfig, DaytonaError, GpuType,
                     Resources)

from harness import API_KEY, BUSYBOX

@pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes need root")
def test_a_one_gpu_server_gives_its_gpu_to_one_sandbox_at_a_time_and_says_why_the_second_waits(cove, cdi_dir):
    server = cove(extra=["--cdi-spec-dir", str(cdi_dir)])
    status, regions = server.api("GET", "/regions")
    assert status == 200 and regions and all(r["gpus"] == 1 for r in regions), regions

    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    daytona.snapshot.create(
        CreateSnapshotParams(name="gpu-snap", image=BUSYBOX, resources=Resources(cpu=1, memory=1, disk=1, gpu=1))
    )
    first = daytona.create(CreateSandboxFromSnapshotParams(snapshot="gpu-snap"))
    r = first.process.exec("test -c /dev/nvidia0 && echo node-ok; echo env=$NVIDIA_VISIBLE_DEVICES; grep CapEff /proc/self/status")
    assert "node-ok" in r.result and "env=void" in r.result, r.result
    assert "CapEff:\t00000000a80425fb" in r.result, "Docker's capabilities, nothing more: " + r.result

    with pytest.raises(DaytonaError) as refused:
        daytona.create(CreateSandboxFromSnapshotParams(snapshot="gpu-snap"))
    assert refused.value.status_code == 409, refused.value
    assert "1 requested, 0 free of 1" in str(refused.value), refused.value

    # Stopped, it frees the GPU; a start takes it back, and refuses while another holds it.
    first.stop()
    second = daytona.create(CreateSandboxFromSnapshotParams(snapshot="gpu-snap"))
    with pytest.raises(DaytonaError) as refused:
        first.start()
    assert refused.value.status_code == 409 and "0 free of 1" in str(refused.value), refused.value
    assert daytona.get(first.id).state.value == "stopped", "a refused start leaves it stopped"
    second.delete()
    first.start()
    assert "node-ok" in first.process.exec("test -c /dev/nvidia0 && echo node-ok").result
    first.delete()


def test_a_snapshot_asking_for_a_gpu_type_is_refused_naming_the_field_rather_than_given_any_gpu(cove, cdi_dir):
    server = cove(extra=["--cdi-spec-dir", str(cdi_dir)])
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    with pytest.raises(DaytonaError) as refused:
        daytona.snapshot.create(CreateSnapshotParams(
            name="typed", image=BUSYBOX, resources=Resources(cpu=1, memory=1, disk=1, gpu=1, gpu_type=GpuType.H100)))
    assert refused.value.status_code == 400 and "gpuType is not supported" in str(refused.value), refused.value
    assert server.api("GET", "/snapshots/typed")[0] == 404, "nothing was created"
    st, snap = server.api("POST", "/snapshots", {"name": "untyped", "imageName": BUSYBOX, "gpu": 1, "gpuType": []})
    assert st == 200 and snap.get("gpuType") is None, "an empty list asks for no type"
