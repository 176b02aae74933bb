"""Attacks through Dockerfiles and build inputs (issue 9, holes 7 and 13): a Dockerfile whose
ARG values multiply line after line, one too large or with too many instructions, and paths
nested thousands of directories deep (a COPY destination, a RUN step's output, a build
context entry, a base image layer). Each is refused at snapshot creation with a 400 that names
the limit, or, where only the build can see it, ends `build_failed`/`error` with a reason that
names the path problem and keeps its cause, never a 500 or a server that balloons."""

import io
import tarfile
import time
import uuid
from datetime import timedelta

import mkimage
from harness import BUSYBOX, FIXTURES

KIB = 1024


def rss_kib(server, field="VmRSS"):
    for line in open(f"/proc/{server.proc.pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{server.proc.pid}/status")


def create_built(server, name, dockerfile, hashes=()):
    return server.api("POST", "/snapshots", {"name": name, "buildInfo": {"dockerfileContent": dockerfile, "contextHashes": list(hashes)}})


def multiplying_args(lines=11, before_from=False):
    """The measured attack: each ARG is four times the one before (64 MiB after 11 lines)."""
    args = [f"ARG A0={'x' * 64}"] + [f"ARG A{i}=$A{i - 1}$A{i - 1}$A{i - 1}$A{i - 1}" for i in range(1, lines)]
    body = args + [f"FROM {BUSYBOX}"] if before_from else [f"FROM {BUSYBOX}"] + args
    return "\n".join(body + ["RUN echo never-built"]) + "\n"


def test_multiplying_args_are_refused_at_create_with_a_400_naming_the_limit_quickly_and_memory_stays_small(server):
    before = rss_kib(server)
    t0 = time.monotonic()
    st, body = create_built(server, "multiply", multiplying_args())
    elapsed = time.monotonic() - t0
    assert st == 400, body
    assert "dockerfile line 8: expanded value exceeds 64 KiB" in body["message"], body
    assert elapsed < 5, elapsed
    peak = rss_kib(server, "VmHWM")
    assert peak - before < 64 * KIB, f"the server grew from {before} KiB to a peak of {peak} KiB"
    assert server.api("GET", "/snapshots/multiply")[0] == 404, "nothing was recorded"

    st, body = create_built(server, "multiply-global", multiplying_args(before_from=True))
    assert st == 400 and "dockerfile line 7: expanded value exceeds 64 KiB" in body["message"], body
    st, body = server.api("POST", "/sandbox", {"buildInfo": {"dockerfileContent": multiplying_args()}})
    assert st == 400 and "expanded value exceeds 64 KiB" in body["message"], body
    assert rss_kib(server, "VmHWM") - before < 64 * KIB


def test_an_instruction_whose_expanded_words_add_up_past_its_limit_is_refused(server):
    df = f"FROM {BUSYBOX}\nARG A={'y' * 60 * KIB}\nENV B1=$A B2=$A B3=$A B4=$A B5=$A\n"
    st, body = create_built(server, "wide", df)
    assert st == 400, body
    assert "dockerfile line 3: expanded instruction exceeds 256 KiB" in body["message"], body


def test_env_values_accumulating_past_the_stage_limit_are_refused(server):
    df = f"FROM {BUSYBOX}\nARG A={'v' * 60 * KIB}\n" + "".join(f"ENV E{i}a=$A E{i}b=$A\n" for i in range(6))
    st, body = create_built(server, "accumulate", df)
    assert st == 400, body
    assert "dockerfile line 6:" in body["message"] and "over the limit of 512 KiB" in body["message"], body


def test_a_dockerfile_over_one_mib_is_refused(server):
    df = f"FROM {BUSYBOX}\n" + "# padding padding padding\n" * (60 * KIB)
    assert len(df) > 1 << 20
    st, body = create_built(server, "huge", df)
    assert st == 400, body
    assert "over the limit of 1 MiB" in body["message"], body


def test_more_than_a_thousand_instructions_are_refused(server):
    df = f"FROM {BUSYBOX}\n" + "RUN true\n" * 1000
    st, body = create_built(server, "long", df)
    assert st == 400, body
    assert "1001 instructions, over the limit of 1000" in body["message"] and "line 1001" in body["message"], body
    st, _ = create_built(server, "long-enough", f"FROM {BUSYBOX}\n" + "LABEL a=b\n" * 999)
    assert st == 200, "a thousand instructions are fine"


def test_a_copy_destination_five_thousand_directories_deep_is_a_400_naming_the_path_problem(server):
    deep = "/d" * 5000
    for name, df in [
        ("deep-copy", f"FROM {BUSYBOX}\nCOPY a.txt {deep}/\n"),
        ("deep-workdir", f"FROM {BUSYBOX}\nWORKDIR {deep}\n"),
        ("deep-many-workdirs", f"FROM {BUSYBOX}\n" + "WORKDIR d\n" * 600),
    ]:
        st, body = create_built(server, name, df)
        assert st == 400, (name, body)
        msg = body["message"]
        assert "bytes long, over the limit of 3 KiB for a path" in msg or "directories deep, over the limit of 512" in msg, msg
        assert len(msg) < 500, f"the path is shortened in the message: {len(msg)} bytes"


def deep_context_tar():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        body = b"deep\n"
        ti = tarfile.TarInfo("a/" * 5000 + "f")
        ti.size, ti.mode = len(body), 0o644
        t.addfile(ti, io.BytesIO(body))
    return buf.getvalue()


def test_a_build_context_entry_five_thousand_directories_deep_ends_build_failed_naming_it(s3_server):
    from obstore.store import S3Store

    st, access = s3_server.api("GET", "/object-storage/push-access")
    assert st == 200, access
    store = S3Store(
        bucket=access["bucket"],
        endpoint=access["storageUrl"],
        region=access["region"],
        access_key_id=access["accessKey"],
        secret_access_key=access["secret"],
        session_token=access["sessionToken"],
        client_options={"timeout": timedelta(seconds=30)},
        retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=5)},
    )
    h = uuid.uuid4().hex
    store.put(f"{access['organizationId']}/{h}/context.tar", deep_context_tar())
    st, snap = create_built(s3_server, "deep-context", f"FROM {BUSYBOX}\nCOPY . /ctx/\n", [h])
    assert st == 200, snap
    done = s3_server.wait_state(snap["id"], timeout=120)
    assert done["state"] == "build_failed", done
    reason = done["errorReason"]
    assert "extract the build context" in reason and "entry a/a/a/" in reason, reason
    assert "is 10001 bytes long, over the limit of 3 KiB for a path" in reason, reason


def deep_layer():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        body = b"deep\n"
        ti = tarfile.TarInfo("deep/" + "a/" * 5000 + "f")
        ti.size, ti.mode = len(body), 0o644
        t.addfile(ti, io.BytesIO(body))
    return buf.getvalue()


def test_a_base_image_layer_deeper_than_path_max_fails_with_its_cause_in_the_reason(server, registry):
    mkimage.push_image(registry.url, "deeplayer", ["1.0"], seed="deeplayer", raw_layers=[deep_layer()])
    st, snap = server.api("POST", "/snapshots", {"name": "deep-layer", "imageName": f"{FIXTURES}/deeplayer:1.0"})
    assert st == 200, snap
    done = server.wait_state(snap["id"], timeout=120)
    assert done["state"] == "error", done
    reason = done["errorReason"]
    assert "from layer entry" in reason and "File name too long" in reason, reason
    assert len(reason) < 1000, len(reason)

    st, snap = create_built(server, "from-deep-layer", f"FROM {FIXTURES}/deeplayer:1.0\nRUN true\n")
    assert st == 200, snap
    done = server.wait_state(snap["id"], timeout=120)
    assert done["state"] == "build_failed", done
    assert "from layer entry" in done["errorReason"] and "File name too long" in done["errorReason"], done


def test_a_run_step_nesting_directories_past_the_depth_limit_ends_build_failed_naming_the_path_problem(server):
    # 1500 levels: deeper than the limit, and as deep as busybox's `cd` goes (its PWD must
    # stay under PATH_MAX).
    df = f"FROM {BUSYBOX}\nRUN i=0; while [ $i -lt 1500 ]; do mkdir a && cd a || exit 1; i=$((i+1)); done\n"
    st, snap = create_built(server, "deep-run", df)
    assert st == 200, snap
    done = server.wait_state(snap["id"], timeout=180)
    assert done["state"] == "build_failed", done
    reason = done["errorReason"]
    # The runtime refuses to copy the step's changes off its disk (before any layer export).
    assert "step `RUN i=0;" in reason and "copy the step's changes off its disk" in reason, reason
    assert "/a/a/a/" in reason and "directories nested deeper than 512 levels" in reason, reason
    assert len(reason) < 1000, len(reason)
    assert server.api("GET", "/health")[0] == 200, "the server survived the walk"
