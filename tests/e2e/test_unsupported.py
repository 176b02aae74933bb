"""No silent drops: SDK methods whose Daytona route Cove does not serve get a 501 naming the
feature (server routes and toolbox paths alike), create fields Cove does not honour get a 400
naming the field, through both official SDKs (unmodified), and a bad key is still a 401 first."""

import io
import json

import pytest
from daytona import (
    CreateSandboxFromSnapshotParams,
    CreateSecretParams,
    Daytona,
    DaytonaConfig,
    DaytonaError,
    Resources,
    VolumeMount,
)

from daytona_api_client.exceptions import ApiException

from harness import API_KEY
from tsrun import run_ts


@pytest.fixture
def env(busybox_default):
    """A server with a default busybox snapshot, an SDK client and one started sandbox."""
    server, daytona = busybox_default("plain")
    sandbox = daytona.create()
    yield server, daytona, sandbox
    sandbox.delete()


def refused(call, *names):
    """Runs `call`, which must fail with a 501 DaytonaError whose message names every `names`."""
    with pytest.raises(DaytonaError) as e:
        call()
    msg = str(e.value)
    assert e.value.status_code == 501, f"{e.value.status_code}: {msg}"
    assert "not supported by this server (Cove)" in msg, msg
    for n in names:
        assert n in msg, msg
    return msg


def refused_raw(call, *names):
    """Like `refused`, for the secret and warm-pool services, which (in this SDK version) let
    the generated client's ApiException through instead of wrapping it in a DaytonaError."""
    with pytest.raises(ApiException) as e:
        call()
    assert e.value.status == 501, str(e.value)
    msg = json.loads(e.value.body)["message"]
    assert "not supported by this server (Cove)" in msg, msg
    for n in names:
        assert n in msg, msg


def test_sandbox_methods_without_a_cove_route_are_refused_with_501_naming_the_feature(env):
    server, daytona, sandbox = env
    refused(lambda: sandbox.resize(Resources(cpu=2)), "sandbox resize")
    refused(lambda: sandbox.fork(), "sandbox forks")
    refused(lambda: sandbox.pause(), "pausing a sandbox")
    refused(lambda: sandbox.recover(), "recovering a sandbox")
    refused(lambda: sandbox.create_snapshot("from-running"), "create_snapshot")
    refused(lambda: sandbox.create_ssh_access(), "SSH access")
    refused(lambda: sandbox.set_ttl(30), "time to live")
    refused(lambda: sandbox.set_auto_pause_interval(5), "auto-pause")
    refused(lambda: sandbox.update_secrets({"A": "s"}), "organization secrets")
    refused(lambda: sandbox.download_url("x.txt"), "signed file URLs")
    refused(lambda: sandbox.get_metrics(), "deployment configuration")
    # The sandbox is untouched by all of that.
    assert sandbox.process.exec("echo still here").result == "still here\n"


def test_toolbox_features_the_agent_lacks_are_refused_with_501_naming_them(env):
    server, daytona, sandbox = env
    refused(lambda: sandbox.computer_use.start(), "computer use")
    refused(lambda: sandbox.computer_use.mouse.click(10, 10), "computer use")
    refused(lambda: sandbox.computer_use.screenshot.take_full_screen(), "computer use")
    refused(lambda: sandbox.get_metrics_latest(), "get_metrics_latest")
    refused(lambda: sandbox.update_env({"A": "1"}), "update_env")


def test_volume_secret_and_warm_pool_services_are_refused_and_a_bad_key_is_still_401(env):
    server, daytona, sandbox = env
    refused(lambda: daytona.volume.list(), "volumes")
    refused(lambda: daytona.volume.get("data", create=True), "volumes")
    refused_raw(lambda: daytona.secret.create(CreateSecretParams(name="TOKEN", value="v")), "organization secrets")
    refused_raw(lambda: daytona.secret.list(), "organization secrets")
    refused_raw(lambda: daytona.warm_pool.list(), "warm pool")
    stranger = Daytona(DaytonaConfig(api_key="not-a-key", api_url=server.api_url))
    with pytest.raises(DaytonaError) as e:
        stranger.volume.list()
    assert e.value.status_code == 401, str(e.value)


@pytest.mark.parametrize(
    "params, field",
    [
        (dict(volumes=[VolumeMount(volume_id="v1", mount_path="/data")]), "volumes"),
        (dict(secrets={"TOKEN": "my-secret"}), "secrets"),
        (dict(ttl_minutes=30), "ttlMinutes"),
        (dict(auto_pause_interval=5), "autoPauseInterval"),
        (dict(outbound_proxy_url="http://proxy:3128"), "outboundProxyUrl"),
        (dict(otel_endpoint_override="http://otel:4317"), "otelEndpointOverride"),
        (dict(kvm=True), "kvm"),
        (dict(spot=True), "spot"),
    ],
)
def test_create_fields_cove_does_not_honour_are_a_400_naming_them(cove, params, field):
    server = cove(extra=["--default-snapshot", "plain"])
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    with pytest.raises(DaytonaError) as e:
        daytona.create(CreateSandboxFromSnapshotParams(snapshot="plain", **params))
    assert e.value.status_code == 400, str(e.value)
    assert f"{field} is not supported by this server" in str(e.value)
    assert server.api("GET", "/sandbox")[1]["items"] == [], "nothing was created"


def test_a_user_tries_a_desktop_then_falls_back_to_a_shell_screenshot_substitute(env):
    """Example flow: a program that probes for computer use, learns from the 501 that this
    server has none, and carries on with what it has (files and commands)."""
    server, daytona, sandbox = env
    try:
        sandbox.computer_use.start()
        have_desktop = True
    except DaytonaError as e:
        assert e.status_code == 501 and "computer use" in str(e)
        have_desktop = False
    assert have_desktop is False
    sandbox.process.exec("mkdir -p /tmp/report && uname -s > /tmp/report/os.txt")
    assert sandbox.fs.download_file("/tmp/report/os.txt") == b"Linux\n"
    try:
        sandbox.resize(Resources(cpu=2))
    except DaytonaError as e:
        assert e.status_code == 501
    sandbox.refresh_data()
    assert sandbox.cpu == 1, "a refused resize changed nothing"


def test_the_typescript_sdk_gets_the_same_refusals(env):
    server, daytona, sandbox = env
    r = run_ts("unsupported.mjs", server, timeout=120, SANDBOX_ID=sandbox.id)
    expect = {
        "resize": "sandbox resize",
        "fork": "sandbox forks",
        "pause": "pausing a sandbox",
        "setTtl": "time to live",
        "createSshAccess": "SSH access",
        "computerUseStart": "computer use",
        "updateEnv": "update_env",
        "volumeList": "volumes",
        "secretList": "organization secrets",
        "warmPoolList": "warm pool",
    }
    for name, feature in expect.items():
        status, message = r["refusals"][name]
        assert status == 501, f"{name}: {status} {message}"
        assert feature in message and "not supported by this server (Cove)" in message, f"{name}: {message}"
    for field in ["volumes", "secrets", "ttlMinutes", "autoPauseInterval", "spot"]:
        status, message = r["createFields"][field]
        assert status == 400 and f"{field} is not supported by this server" in message, f"{field}: {status} {message}"


def test_the_remaining_small_sandbox_methods_of_the_coverage_table_work(env):
    """Methods the README's SDK table lists as working that no other test calls by name."""
    server, daytona, sandbox = env
    assert sandbox.get_work_dir() == "/root"
    with pytest.warns(DeprecationWarning):
        assert sandbox.get_user_root_dir() == sandbox.get_user_home_dir()
    sandbox.process.create_session("listed")
    assert "listed" in [s.session_id for s in sandbox.process.list_sessions()]
    sandbox.fs.upload_file_stream(io.BytesIO(b"streamed\n" * 1000), "/tmp/streamed.txt")
    assert sandbox.process.exec("wc -l < /tmp/streamed.txt").result.strip() == "1000"


def test_os_user_and_language_create_fields_are_honoured(env):
    server, daytona, sandbox = env
    other = daytona.create(CreateSandboxFromSnapshotParams(snapshot="plain", os_user="nobody", language="javascript"))
    try:
        assert other.user == "nobody"
        assert other.process.exec("id -un", cwd="/tmp").result.strip() == "nobody"
        assert other.labels["code-toolbox-language"] == "javascript"
    finally:
        other.delete()
