"""CPU and memory of the processes under test, from /proc; the machine and software versions."""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

from benchlib.stack import log

CLK_TCK = os.sysconf("SC_CLK_TCK")


class ProcStat(NamedTuple):
    comm: str
    ppid: int
    session: int
    seconds: float  # utime + stime
    reaped: float  # cutime + cstime: its children that ended (and are no longer in /proc)


def proc_stat(pid: str) -> ProcStat | None:
    """One process's /proc/<pid>/stat, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is state (field 3 of the file): ppid 4, session 6, utime/stime 14/15,
    # cutime/cstime (children waited for) 16/17.
    return ProcStat(
        comm,
        int(fields[1]),
        int(fields[3]),
        (int(fields[11]) + int(fields[12])) / CLK_TCK,
        (int(fields[13]) + int(fields[14])) / CLK_TCK,
    )


def _processes() -> list[tuple[int, ProcStat]]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and (stat := proc_stat(pid)) is not None:
            found.append((int(pid), stat))
    return found


class PostgresMeter:
    """What the benchmark costs the PostgreSQL server: the CPU seconds of the processes that
    work for it, and the WAL it writes.

    The server may be shared (other databases, other sessions' tests), so the CPU counted is
    that of the backends connected to the benchmark's `databases` and of the processes that
    serve no database (checkpointer, background writer, WAL writer, WAL senders: they write
    and flush the benchmark's WAL), as `pg_stat_activity` lists them at each sample, plus the
    postmaster itself. The WAL position (`pg_current_wal_lsn()`) is the whole cluster's: on
    a shared server, another database's writes count too. The CPU needs a local server (its
    processes in /proc); otherwise only the WAL is measured.
    """

    def __init__(self, url: str, databases: set[str]) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)
        self.databases = sorted(databases)
        row = self.conn.execute("SELECT pg_backend_pid()").fetchone()
        backend = proc_stat(str(row[0])) if row else None
        self.postmaster = backend.ppid if backend is not None else None
        # Each process's CPU when last seen, and that of the processes gone since: a backend
        # that exits between two samples keeps what it had used at the first of them, so the
        # total never goes down.
        self.seen: dict[str, float] = {}
        self.departed = 0.0

    def sample(self) -> dict[str, float]:
        """{"pg_bench": CPU seconds so far, "wal": bytes of WAL so far}."""
        rows = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = ANY(%s) OR datname IS NULL",
            (self.databases,),
        ).fetchall()
        wal = self.conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')").fetchone()
        found = {"wal": float(wal[0]) if wal else 0.0}
        if self.postmaster is not None:
            now: dict[str, float] = {}
            for pid in [str(r[0]) for r in rows] + [str(self.postmaster)]:
                stat = proc_stat(pid)
                if stat is not None and stat.comm.startswith("postgres"):
                    now[pid] = stat.seconds
            self.departed += sum(v for pid, v in self.seen.items() if pid not in now)
            self.seen = now
            found["pg_bench"] = self.departed + sum(now.values())
        return found

    def close(self) -> None:
        self.conn.close()


_postgres_meter: PostgresMeter | None = None


def measure_postgres(meter: PostgresMeter | None) -> None:
    """From now on, `cpu_by_parent` and `cpu_by_session` also report the meter's figures
    ("pg_bench", "wal"), sampled at the same moments (None: no longer)."""
    global _postgres_meter
    _postgres_meter = meter


def _machine(totals: dict[str, float]) -> dict[str, float]:
    if _postgres_meter is not None:
        totals.update(_postgres_meter.sample())
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already inside user/nice)
    values = (values + [0] * 8)[:8]
    totals["machine_busy"] = (sum(values) - values[3] - values[4] - values[7]) / CLK_TCK
    totals["steal"] = values[7] / CLK_TCK  # a noisy host taking the vCPU away
    totals["wall"] = time.monotonic()
    return totals


def cpu_by_parent(gunicorn_pid: int | None) -> dict[str, float]:
    """CPU seconds so far of gunicorn (master + workers, plus the workers the master replaced),
    PostgreSQL, Redis, and the machine."""
    totals = {"gunicorn": 0.0, "postgres": 0.0, "redis": 0.0}
    for pid, stat in _processes():
        if gunicorn_pid is not None and pid == gunicorn_pid:
            totals["gunicorn"] += stat.seconds + stat.reaped
        elif gunicorn_pid is not None and stat.ppid == gunicorn_pid:
            totals["gunicorn"] += stat.seconds
        elif stat.comm.startswith("postgres"):
            totals["postgres"] += stat.seconds
        elif stat.comm.startswith("redis-server"):
            totals["redis"] += stat.seconds
    return _machine(totals)


def cpu_by_session(sessions: dict[int, str]) -> dict[str, float]:
    """CPU seconds so far of process sessions ({session id: name}), PostgreSQL and Redis.

    Each process counts with the children it reaped (PostgreSQL's backends of closed
    connections, a replaced pool process), which are no longer in /proc.
    """
    totals = dict.fromkeys([*sessions.values(), "postgres", "redis"], 0.0)
    for _pid, stat in _processes():
        seconds = stat.seconds + stat.reaped
        if stat.session in sessions:
            totals[sessions[stat.session]] += seconds
        elif stat.comm.startswith("postgres"):
            totals["postgres"] += seconds
        elif stat.comm.startswith("redis-server"):
            totals["redis"] += seconds
    return _machine(totals)


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def session_rss(session: int) -> dict[int, tuple[str, int]]:
    """{pid: (name, RSS in KiB)} of the processes in one session (a process group we started)."""
    found: dict[int, tuple[str, int]] = {}
    for pid, stat in _processes():
        if stat.session != session:
            continue
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        rss = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("VmRSS:")), "0")
        found[pid] = (stat.comm, int(rss))
    return found


def machine_description() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": f"{os.cpu_count()} CPU ({model})",
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def versions(args: argparse.Namespace) -> dict[str, str]:
    found: dict[str, str] = {}
    try:
        import django
        import gunicorn

        found["django"] = django.get_version()
        found["gunicorn"] = gunicorn.__version__
    except ImportError:
        pass
    try:
        import psycopg

        with psycopg.connect(args.database_url) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            found["postgresql"] = str(row[0]) if row else "?"
    except Exception as exc:  # informational only
        log(f"PostgreSQL version unknown: {exc}")
    try:
        import redis

        found["redis"] = str(redis.Redis.from_url(args.redis_url).info("server")["redis_version"])
    except Exception as exc:
        log(f"Redis version unknown: {exc}")
    if args.loadgen == "wrk":
        out = subprocess.run([args.wrk, "--version"], capture_output=True, text=True)
        found["wrk"] = (out.stdout or out.stderr).split("\n")[0].split(" Copyright")[0]
    return found
