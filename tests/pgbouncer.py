"""A real PgBouncer in transaction pooling mode in front of the test PostgreSQL (SPEC §13).

``CLEANUP_WORKER_TEST_VIA=pgbouncer`` makes the suite's database fixtures hand out DSNs that go
through one of these; tests that are about PgBouncer itself start one regardless.

Getting the binary on a fresh machine, without anything installed by hand (``locate()``):
``pgbouncer`` on PATH (or ``/usr/sbin/pgbouncer``); else a copy extracted from Debian's package
into ``CACHE`` (``apt-get download pgbouncer`` + ``dpkg-deb -x``), with any shared library
``ldd`` cannot find taken from the packages it depends on in the same way. Nothing is installed
system-wide; the cache is reused by later runs.

How it runs (``PgBouncer``):

- as the OS user that owns the server's unix socket directory when we are root (PgBouncer
  refuses root, and the embedded/system server's socket directory is private to its user),
  as ourselves otherwise; it dies with the process that started it (``PR_SET_PDEATHSIG``);
- ``[databases] * = host=<server socket dir> port=<port>``: a wildcard, so every per-test
  database works without reconfiguring;
- ``pool_mode = transaction``, listening on a free loopback TCP port only;
- ``auth_type = scram-sha-256`` with a userlist of *plain* passwords: clients must present the
  right password (a refused password is testable), and PgBouncer can log in to the server with
  the same password (scram pass-through), or to a trust-authenticated local server without one.
  ``add_user`` registers further roles (the least-privilege tests) and reloads.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Final, Self
from urllib.parse import quote

import psycopg
from psycopg.conninfo import conninfo_to_dict

from cwlab.postgres import PostgresServer

ENV_VIA: Final = "CLEANUP_WORKER_TEST_VIA"
CACHE: Final = Path(f"/tmp/cleanup-worker-pgbouncer-{os.geteuid()}")
_START_TIMEOUT_S: Final = 20.0
_PR_SET_PDEATHSIG: Final = 1


class PgBouncerUnavailable(RuntimeError):
    """PgBouncer could not be found, fetched or started; the message says why and what to do."""


def via_pgbouncer() -> bool:
    """Whether the suite routes its database fixtures through PgBouncer."""
    via = os.environ.get(ENV_VIA, "direct")
    if via not in ("direct", "pgbouncer"):
        raise PgBouncerUnavailable(f"{ENV_VIA}={via!r}: use 'direct' or 'pgbouncer'")
    return via == "pgbouncer"


# --- getting the binary ----------------------------------------------------------------------


def locate() -> tuple[Path, dict[str, str]]:
    """The pgbouncer executable and the environment it needs (LD_LIBRARY_PATH for a copy)."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if found:
        return Path(found), {}
    root = CACHE / "root"
    binary = root / "usr" / "sbin" / "pgbouncer"
    if not binary.exists():
        _extract_package("pgbouncer", root)
    libs = root / "usr" / "lib" / "x86_64-linux-gnu"
    env = {"LD_LIBRARY_PATH": f"{libs}:{root / 'lib' / 'x86_64-linux-gnu'}"}
    missing = _missing_libraries(binary, env)
    if missing:
        for package in _dependencies("pgbouncer"):
            _extract_package(package, root)
        missing = _missing_libraries(binary, env)
    if missing:
        raise PgBouncerUnavailable(
            f"{binary} cannot find {', '.join(missing)}; install pgbouncer (apt-get install "
            "pgbouncer) or put it on PATH"
        )
    return binary, env


def _extract_package(package: str, root: Path) -> None:
    """``apt-get download`` one Debian package and unpack it under ``root`` (no install)."""
    CACHE.mkdir(mode=0o755, exist_ok=True)
    CACHE.chmod(0o755)  # the PgBouncer user (not us, as root) executes from here
    with tempfile.TemporaryDirectory(dir=CACHE) as download:
        try:
            _tool(["apt-get", "download", "-q", package], cwd=download)
        except PgBouncerUnavailable:
            if os.geteuid() != 0:
                raise
            _tool(["apt-get", "update", "-q"])  # a fresh image often has no package lists
            _tool(["apt-get", "download", "-q", package], cwd=download)
        [deb] = Path(download).glob("*.deb")
        _tool(["dpkg-deb", "-x", str(deb), str(root)])
    for part in (root, *root.rglob("*")):
        if part.is_dir():
            part.chmod(0o755)


def _dependencies(package: str) -> list[str]:
    """Packages ``package`` depends on that dpkg does not report as installed."""
    out = _tool(["apt-cache", "depends", "--no-recommends", "--no-suggests", package])
    names = {
        line.split(":", 1)[1].strip().strip("<>")
        for line in out.splitlines()
        if line.strip().startswith(("Depends:", "PreDepends:"))
    }
    return sorted(name for name in names if not _installed(name))


def _installed(package: str) -> bool:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
    )
    return done.returncode == 0 and "install ok installed" in done.stdout


def _missing_libraries(binary: Path, env: dict[str, str]) -> list[str]:
    out = _tool(["ldd", str(binary)], env=env)
    return [line.split()[0] for line in out.splitlines() if "not found" in line]


def _tool(args: list[str], *, cwd: str | None = None, env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(
            args,
            cwd=cwd,
            env=None if env is None else {**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        raise PgBouncerUnavailable(
            f"getting pgbouncer failed at `{' '.join(args)}`: {detail.strip()[-300:]}; "
            "install pgbouncer or put it on PATH"
        ) from None
    return done.stdout


# --- running it ------------------------------------------------------------------------------


class PgBouncer:
    """One PgBouncer process in front of ``server``; ``dsn(dbname)`` connects through it."""

    def __init__(self, server: PostgresServer) -> None:
        binary, env = locate()
        target = conninfo_to_dict(server.dsn())
        self._user = str(target.get("user") or "postgres")
        # With the server's own password (if its DSN has one) PgBouncer can log in to it.
        self._users = {self._user: str(target.get("password") or secrets.token_hex(12))}
        self._owner = _run_as(str(target.get("host") or ""))
        self._dir = Path(tempfile.mkdtemp(prefix="cw-pgbouncer-"))
        self.port = _free_port()
        self._write_config(str(target.get("host") or "127.0.0.1"), str(target.get("port") or 5432))
        self._chown()
        self._spawn(binary, env, log_mode="wb")
        try:
            self._wait_ready(self.dsn())
        except BaseException:
            self.close()
            raise

    def _spawn(self, binary: Path, env: dict[str, str], *, log_mode: str) -> None:
        """Start PgBouncer on this instance's configuration (as the socket owner when root)."""
        with (self._dir / "stderr.log").open(log_mode) as stderr:
            self._proc = subprocess.Popen(
                [str(binary), "-q", str(self._dir / "pgbouncer.ini")],
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                cwd="/",
                user=None if self._owner is None else self._owner.pw_uid,
                group=None if self._owner is None else self._owner.pw_gid,
                extra_groups=None if self._owner is None else [],
                preexec_fn=_die_with_parent,
            )

    def dsn(self, dbname: str = "postgres", *, user: str | None = None) -> str:
        """A URI through PgBouncer, as ``user`` (default: the server's superuser)."""
        user = user or self._user
        return (
            f"postgresql://{quote(user, safe='')}:{quote(self._users[user], safe='')}"
            f"@127.0.0.1:{self.port}/{quote(dbname, safe='')}"
        )

    def add_user(self, user: str, password: str) -> None:
        """Let ``user`` log in with ``password`` (the server role must accept it too)."""
        self._users[user] = password
        self._write_userlist()
        self._proc.send_signal(signal.SIGHUP)  # reload: re-reads the auth file
        self._wait_ready(self.dsn(user=user))

    def log(self) -> str:
        return "".join(
            p.read_text(errors="replace")[-4000:]
            for p in (self._dir / "pgbouncer.log", self._dir / "stderr.log")
            if p.exists()
        )

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _write_config(self, host: str, port: str) -> None:
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "scram-sha-256",
            "auth_file": str(self._dir / "userlist.txt"),
            "pool_mode": "transaction",
            # Tests run several worker processes with pools of their own.
            "max_client_conn": "2000",
            "default_pool_size": "40",
            "logfile": str(self._dir / "pgbouncer.log"),
            "pidfile": str(self._dir / "pgbouncer.pid"),
        }
        (self._dir / "pgbouncer.ini").write_text(
            f"[databases]\n* = host={host} port={port}\n\n[pgbouncer]\n"
            + "".join(f"{k} = {v}\n" for k, v in settings.items())
        )
        self._write_userlist()

    def _write_userlist(self) -> None:
        path = self._dir / "userlist.txt"
        path.write_text("".join(f'"{u}" "{p}"\n' for u, p in self._users.items()))
        if self._owner is not None:
            os.chown(path, self._owner.pw_uid, self._owner.pw_gid)
        path.chmod(0o600)

    def _chown(self) -> None:
        if self._owner is None:
            return
        for path in (self._dir, *self._dir.iterdir()):
            os.chown(path, self._owner.pw_uid, self._owner.pw_gid)

    def _wait_ready(self, dsn: str) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                raise PgBouncerUnavailable(f"pgbouncer exited: {self.log().strip()[-600:]}")
            try:
                with psycopg.connect(dsn, connect_timeout=2, prepare_threshold=None) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise PgBouncerUnavailable(
                        f"pgbouncer did not accept a login within {_START_TIMEOUT_S:g}s: "
                        f"{str(exc).strip()[:300]}; log: {self.log().strip()[-600:]}"
                    ) from None
            time.sleep(0.05)


def _run_as(host: str) -> pwd.struct_passwd | None:
    """As root: the owner of the server's socket directory (who alone may enter it), else the
    ``postgres`` user; as anybody else: ourselves (None)."""
    if os.geteuid() != 0:
        return None
    if host.startswith("/") and Path(host).is_dir() and Path(host).stat().st_uid != 0:
        return pwd.getpwuid(Path(host).stat().st_uid)
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise PgBouncerUnavailable(
            "running as root, PgBouncer needs an unprivileged OS user: create user 'postgres'"
        ) from None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
