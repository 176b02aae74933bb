"""Attacks through image content (issue 9, holes 4 and 8): a layer that unpacks to far more
than it weighs must stop at a limit (a multiple of its compressed size, and the snapshot's
disk size) without leaving its partial unpack behind; device nodes in a layer must not become
devices on the host under <data-dir>/images/, and a set-id file is never left writable by
others."""

import io
import os
import stat
import tarfile

import pytest

import mkimage
from harness import FIXTURES

BOMB = f"{FIXTURES}/bomb:1.0"
DEVICES = f"{FIXTURES}/devices:1.0"


def special_layer():
    """A layer with a character device /dev/evil (1:1, what /dev/mem is), a block device, a
    FIFO and a world-writable set-uid root program."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, mode, major, minor in [
            ("dev", tarfile.DIRTYPE, 0o755, 0, 0),
            ("dev/evil", tarfile.CHRTYPE, 0o666, 1, 1),
            ("dev/disk", tarfile.BLKTYPE, 0o666, 8, 0),
            ("run", tarfile.DIRTYPE, 0o755, 0, 0),
            ("run/pipe", tarfile.FIFOTYPE, 0o600, 0, 0),
        ]:
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.devmajor, ti.devminor = kind, mode, major, minor
            t.addfile(ti)
        body = b"#!/bin/sh\nexec sh\n"
        ti = tarfile.TarInfo("usr/local/bin/rootshell")
        ti.mode, ti.size, ti.uid, ti.gid = 0o4777, len(body), 0, 0
        t.addfile(ti, io.BytesIO(body))
    return buf.getvalue()


@pytest.fixture(scope="module")
def attack_images(registry):
    mkimage.push_image(registry.url, "bomb", ["1.0"], seed="bomb", raw_layers=[mkimage.zeros_bomb()])
    mkimage.push_image(registry.url, "devices", ["1.0"], seed="devices", raw_layers=[special_layer()])
    return registry


def create(server, name, image, **extra):
    st, body = server.api("POST", "/snapshots", {"name": name, "imageName": image, **extra})
    assert st == 200, body
    return server.wait_state(body["id"])


def assert_no_unpack_left(server):
    assert list((server.data_dir / "tmp").iterdir()) == [], "the partial unpack is removed"
    images = server.data_dir / "images"
    assert not images.exists() or list(images.iterdir()) == [], "no image directory is left"


def test_a_layer_bomb_stops_at_the_unpack_ratio_and_leaves_nothing_behind(server, attack_images):
    snap = create(server, "bomb", BOMB)
    assert snap["state"] == "error", snap
    reason = snap["errorReason"]
    assert "size limit of" in reason and "--max-unpack-ratio" in reason, reason
    assert '"zeros" (2.0 GiB)' in reason, reason
    assert_no_unpack_left(server)


def test_with_no_ratio_limit_a_layer_bomb_stops_at_the_snapshot_disk_size(cove, attack_images):
    server = cove(extra=["--max-unpack-ratio", "0"])
    snap = create(server, "bomb-disk", BOMB, disk=1)
    assert snap["state"] == "error", snap
    reason = snap["errorReason"]
    assert "size limit of 1.0 GiB (the disk size it is pulled for)" in reason, reason
    assert_no_unpack_left(server)


def test_device_nodes_in_a_layer_are_not_created_on_the_host(server, attack_images):
    snap = create(server, "devices", DEVICES)
    assert snap["state"] == "active", snap
    images = server.data_dir / "images"
    (image,) = list(images.iterdir())
    rootfs = image / "rootfs"
    devices = []
    for dirpath, dirnames, filenames in os.walk(images):
        for n in dirnames + filenames:
            m = os.lstat(os.path.join(dirpath, n)).st_mode
            if stat.S_ISCHR(m) or stat.S_ISBLK(m):
                devices.append(os.path.join(dirpath, n))
    assert devices == [], devices
    assert not os.path.lexists(rootfs / "dev/evil") and not os.path.lexists(rootfs / "dev/disk")
    assert stat.S_ISFIFO(os.lstat(rootfs / "run/pipe").st_mode), "FIFOs are kept"
    m = os.lstat(rootfs / "usr/local/bin/rootshell")
    assert (m.st_uid, stat.S_IMODE(m.st_mode)) == (0, 0o4755), oct(m.st_mode)
    assert (rootfs / "bin/busybox").exists(), "the rest of the image is there"
