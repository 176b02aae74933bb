"""GPU sandboxes through CDI, with the official Python SDK. No NVIDIA hardware: the server
reads a CDI spec the test writes, whose "GPU" is a character device with /dev/null's numbers
made by the test (root) outside the data dir."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from daytona import CreateSandboxFromSnapshotParams, CreateSnapshotParams, Daytona, DaytonaConfig, DaytonaError, Resources

from harness import API_KEY, BUSYBOX

SPEC = """cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
      hostPath: {node}
- name: all
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
      hostPath: {node}
containerEdits:
  env:
  - NVIDIA_VISIBLE_DEVICES=void
"""


@pytest.fixture
def cdi_dir():
    host = Path(tempfile.mkdtemp(prefix="cvcdi", dir="/tmp"))
    host.chmod(0o711)  # the sandboxes' root passes through to the node
    node = host / "fakegpu0"
    subprocess.run(["mknod", "-m", "666", str(node), "c", "1", "3"], check=True)
    specs = host / "cdi"
    specs.mkdir()
    (specs / "nvidia.yaml").write_text(SPEC.format(node=node))
    (specs / "nvidia.yaml").chmod(0o644)
    yield specs
    shutil.rmtree(host, ignore_errors=True)


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
