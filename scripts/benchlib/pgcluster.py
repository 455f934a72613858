"""A private PostgreSQL cluster for one run: a primary, a streaming replica made with
`pg_basebackup -R`, and a PgBouncer in transaction pooling in front of the primary, each on a given
port (or a free one), all stopped and deleted again by `PgCluster.stop()` (or the `with` block).

Used by `make rehearse` (scripts/rehearse.py) and by the replica and PgBouncer tests. The servers
are built on the fault suite's `PrivatePostgres` (tests/harness.py: initdb with trust
authentication, `runuser -u postgres` when run as root), so the repository root must be on
`sys.path` (pytest's rootdir is; scripts insert it). Nothing here touches the machine's shared
PostgreSQL.

    from scripts.benchlib.pgcluster import PgCluster   # tests
    from benchlib.pgcluster import PgCluster           # scripts/*.py

    with PgCluster(Path("/tmp/x"), replica=True, bouncer=True) as cluster:
        cluster.primary.create_database("app")
        cluster.primary_url("app"), cluster.replica_url("app"), cluster.bouncer_url("app")
        cluster.replica.wait_caught_up(cluster.primary)

`missing_binaries()` says why a cluster cannot start here (None when it can).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.harness import PG_BIN, PrivatePostgres, free_port, wait_for
from tests.harness import missing_binaries as _harness_missing

PGBOUNCER = os.environ.get("BIGMIND_PGBOUNCER", "/usr/sbin/pgbouncer")


def missing_binaries(*, bouncer: bool = True) -> str | None:
    """Why a cluster cannot be started on this machine, or None."""
    reason = _harness_missing()
    # The fault suite's check includes redis-server, which a cluster does not need.
    if reason is not None and "redis" not in reason:
        return reason
    if not (PG_BIN / "pg_basebackup").is_file():
        return f"{PG_BIN / 'pg_basebackup'} is missing (PostgreSQL 15 server binaries)"
    if bouncer and not Path(PGBOUNCER).is_file():
        return f"{PGBOUNCER} is missing (apt-get install pgbouncer)"
    return None


def _as_postgres(root: Path) -> list[str]:
    """The command prefix that runs a server as the owner of its files: initdb, postgres and
    pgbouncer all refuse to run as root."""
    if os.geteuid() != 0:
        return []
    root.mkdir(parents=True, exist_ok=True)
    shutil.chown(root, user="postgres")
    return ["runuser", "-u", "postgres", "--"]


class Primary(PrivatePostgres):
    """A primary that streams its WAL: `wal_level=replica` and WAL senders for the replicas,
    and enough WAL kept that a replica made during a write load does not fall behind for good."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        super().__init__(root)
        if port is not None:
            self.port = port

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c max_connections=200 -c shared_buffers=64MB "
            "-c wal_level=replica -c max_wal_senders=10 -c wal_keep_size=512MB"
        )
        self._run(
            str(PG_BIN / "pg_ctl"),
            *("-D", str(self.data), "-l", str(self.log), "-o", options),
            *("-w", "-t", "60", "start"),
        )

    def lsn(self) -> str:
        with self.connect("postgres", autocommit=True) as conn:
            return str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])


class Replica(PrivatePostgres):
    """A hot standby of `primary`: a base backup taken with `pg_basebackup -R` (which writes
    `primary_conninfo` and `standby.signal`), then started and waited for until it streams."""

    def __init__(self, root: Path, primary: PrivatePostgres, port: int | None = None) -> None:
        super().__init__(root)
        self.primary = primary
        if port is not None:
            self.port = port

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self._as_owner:
            shutil.chown(self.root, user="postgres")
        self._run(
            str(PG_BIN / "pg_basebackup"),
            *("-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres"),
            *("-D", str(self.data), "-R", "-X", "stream", "-c", "fast"),
            timeout=600,
        )

    def start(self) -> None:
        # The primary's postgresql.conf came with the backup; only what differs is set here.
        # hot_standby_feedback: long reads on the replica do not get cancelled by the primary's
        # vacuum (what a read replica serving API lists wants).
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c max_connections=200 -c shared_buffers=64MB -c hot_standby=on "
            "-c hot_standby_feedback=on -c cluster_name=replica"
        )
        self._run(
            str(PG_BIN / "pg_ctl"),
            *("-D", str(self.data), "-l", str(self.log), "-o", options),
            *("-w", "-t", "60", "start"),
        )

    def streaming(self) -> bool:
        try:
            with self.connect("postgres", autocommit=True) as conn:
                row = conn.execute("SELECT status FROM pg_stat_wal_receiver").fetchone()
        except Exception:
            return False
        return row is not None and row[0] == "streaming"

    def wait_streaming(self, timeout: float = 60) -> None:
        wait_for(
            self.streaming,
            timeout=timeout,
            interval=0.2,
            message=lambda: f"the replica to stream from the primary\n{self.log_tail()}",
        )

    def replayed_up_to(self, lsn: str) -> bool:
        with self.connect("postgres", autocommit=True) as conn:
            row = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [lsn]).fetchone()
        return bool(row[0])

    def wait_caught_up(self, timeout: float = 60) -> float:
        """Wait until the replica has replayed everything the primary had written when this was
        called; the seconds it took."""
        assert isinstance(self.primary, Primary)
        started = time.monotonic()
        target = self.primary.lsn()
        wait_for(
            lambda: self.replayed_up_to(target),
            timeout=timeout,
            interval=0.1,
            message=f"the replica to replay the primary's WAL up to {target}",
        )
        return time.monotonic() - started

    def lag_seconds(self) -> float | None:
        """Seconds since the last transaction the replica replayed was committed on the primary
        (None before it replayed any); 0 when it has replayed all it received."""
        with self.connect("postgres", autocommit=True) as conn:
            row = conn.execute(
                "SELECT CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0"
                " ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) END"
            ).fetchone()
        return None if row[0] is None else float(row[0])


class Bouncer:
    """PgBouncer (Debian's /usr/sbin/pgbouncer) in transaction pooling in front of one server,
    trust authentication (the user must still be in its auth file), every database name passed
    through. It runs in the foreground in its own process group."""

    def __init__(
        self,
        root: Path,
        server_port: int,
        port: int | None = None,
        *,
        pool_size: int = 20,
        max_client_conn: int = 1000,
        extra: dict[str, str] | None = None,
        databases: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.server_port = server_port
        self.port = port if port is not None else free_port()
        self.pool_size = pool_size
        self.max_client_conn = max_client_conn
        self.extra = extra or {}
        # More [databases] entries (name -> libpq options after host and port), e.g. a pool of
        # its own: {"app_workers": "dbname=app connect_query='SET synchronous_commit = off'"}.
        self.databases = databases or {}
        self.log = root / "pgbouncer.log"
        self.config = root / "pgbouncer.ini"
        self.process: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        _as_postgres(self.root)  # the directory exists and pgbouncer can write its log there
        (self.root / "userlist.txt").write_text('"postgres" ""\n')
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(self.root / "userlist.txt"),
            "admin_users": "postgres",
            "pool_mode": "transaction",
            "default_pool_size": str(self.pool_size),
            "max_client_conn": str(self.max_client_conn),
            # psycopg sends no such parameters by default; JDBC-style clients send
            # extra_float_digits, and `options` would otherwise be refused.
            "ignore_startup_parameters": "extra_float_digits,options",
            "logfile": str(self.log),
            "pidfile": str(self.root / "pgbouncer.pid"),
            **self.extra,
        }
        lines = [
            "[databases]",
            *(
                f"{name} = host=127.0.0.1 port={self.server_port} {options}"
                for name, options in self.databases.items()
            ),
            f"* = host=127.0.0.1 port={self.server_port}",
            "",
            "[pgbouncer]",
            *(f"{name} = {value}" for name, value in settings.items()),
        ]
        self.config.write_text("\n".join(lines) + "\n")
        for path in (self.config, self.root / "userlist.txt"):
            if os.geteuid() == 0:
                shutil.chown(path, user="postgres")

    def start(self) -> None:
        self.write_config()
        prefix = _as_postgres(self.root)
        self.process = subprocess.Popen(
            [*prefix, PGBOUNCER, str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.root,
        )
        wait_for(
            self.ready,
            timeout=30,
            interval=0.1,
            message=lambda: f"pgbouncer on port {self.port}\n{self.log_tail()}",
        )

    def ready(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"pgbouncer exited:\n{self.log_tail()}")
        import psycopg

        try:
            with psycopg.connect(
                host="127.0.0.1",
                port=self.port,
                user="postgres",
                dbname="pgbouncer",  # the admin console: answers without a server
                autocommit=True,
                connect_timeout=2,
                prepare_threshold=None,
            ) as conn:
                conn.execute("SHOW VERSION")
        except psycopg.Error:
            return False
        return True

    def show(self, what: str) -> list[tuple[Any, ...]]:
        """`SHOW POOLS`, `SHOW STATS`... from the admin console, as rows."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            dbname="pgbouncer",
            autocommit=True,
            connect_timeout=5,
            prepare_threshold=None,
        ) as conn:
            cursor = conn.execute(f"SHOW {what}")
            return list(cursor.fetchall())

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None


class PgCluster:
    """Primary, optional replica and optional PgBouncer under one root directory (which is
    deleted by `stop`). Ports default to free ones."""

    def __init__(
        self,
        root: Path,
        *,
        replica: bool = True,
        bouncer: bool = True,
        primary_port: int | None = None,
        replica_port: int | None = None,
        bouncer_port: int | None = None,
        bouncer_pool_size: int = 20,
        bouncer_settings: dict[str, str] | None = None,
        bouncer_databases: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.primary = Primary(root / "primary", primary_port)
        self.replica: Replica | None = (
            Replica(root / "replica", self.primary, replica_port) if replica else None
        )
        self.bouncer: Bouncer | None = (
            Bouncer(
                root / "pgbouncer",
                self.primary.port,
                bouncer_port,
                pool_size=bouncer_pool_size,
                extra=bouncer_settings,
                databases=bouncer_databases,
            )
            if bouncer
            else None
        )

    def start(self, databases: tuple[str, ...] = ()) -> PgCluster:
        """initdb and start the primary, create `databases` on it (so the replica has them from
        its base backup), take the replica's base backup and wait until it streams, then start
        PgBouncer. Whatever started is stopped again if a later step fails."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.root.chmod(0o755)  # the postgres user must reach the data directories inside
            if os.geteuid() == 0:
                # ... and every directory above (tempfile.mkdtemp and pytest's tmp_path are 0700).
                reach = subprocess.run(
                    ["runuser", "-u", "postgres", "--", "test", "-x", str(self.root)], check=False
                )
                if reach.returncode != 0:
                    raise RuntimeError(
                        f"the postgres user cannot reach {self.root}: make its parents 0755"
                    )
            self.primary.init()
            self.primary.start()
            for name in databases:
                self.primary.create_database(name)
            if self.replica is not None:
                self.replica.init()
                self.replica.start()
                self.replica.wait_streaming()
            if self.bouncer is not None:
                self.bouncer.start()
        except BaseException:
            self.stop()
            raise
        return self

    def primary_url(self, database: str) -> str:
        return self.primary.url(database)

    def replica_url(self, database: str) -> str:
        assert self.replica is not None, "this cluster has no replica"
        return self.replica.url(database)

    def bouncer_url(self, database: str) -> str:
        assert self.bouncer is not None, "this cluster has no PgBouncer"
        return self.bouncer.url(database)

    def logs(self) -> list[Path]:
        found = [self.primary.log]
        if self.replica is not None:
            found.append(self.replica.log)
        if self.bouncer is not None:
            found.append(self.bouncer.log)
        return [path for path in found if path.exists()]

    def stop(self, keep_logs: Path | None = None) -> None:
        """Stop everything (immediate shutdown: nothing here is worth a checkpoint) and delete
        the root; the servers' logs are copied to `keep_logs` first when given."""
        if keep_logs is not None:
            keep_logs.mkdir(parents=True, exist_ok=True)
            for log in self.logs():
                with contextlib.suppress(OSError):
                    shutil.copy(log, keep_logs / f"{log.parent.name}-{log.name}")
        if self.bouncer is not None:
            self.bouncer.stop()
        for server in (self.replica, self.primary):
            if server is not None:
                server.destroy()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
