#!/usr/bin/env bash
# A private PgBouncer in transaction pooling in front of a PostgreSQL server, for CI, the tests
# (tests/bigmind/test_pgbouncer.py) and the cluster rehearsal. Not a production configuration:
# auth is `trust` on 127.0.0.1 (docs/pgbouncer.md has the production pgbouncer.ini).
#
#   scripts/pgbouncer_up.sh start DIR PORT [SERVER_HOST] [SERVER_PORT] [POOL_SIZE]
#   scripts/pgbouncer_up.sh stop DIR
#
# `start` writes DIR/pgbouncer.ini, starts PgBouncer as a daemon (pid in DIR/pgbouncer.pid, log
# in DIR/pgbouncer.log) and returns once it accepts connections on 127.0.0.1:PORT. Every
# database name a client asks for is served from SERVER_HOST:SERVER_PORT (default
# 127.0.0.1:5432), POOL_SIZE server connections per database and user (default 20). `stop`
# ends that PgBouncer (by its pid file) and waits for it. PGBOUNCER names the binary (default:
# Debian's /usr/sbin/pgbouncer, then the PATH).
set -euo pipefail

command=${1:?usage: $0 start DIR PORT [SERVER_HOST] [SERVER_PORT] [POOL_SIZE] | stop DIR}
dir=${2:?the directory for the configuration, pid file and log}

pid_of() { [[ -s "$dir/pgbouncer.pid" ]] && cat "$dir/pgbouncer.pid"; }

if [[ $command == stop ]]; then
  pid=$(pid_of) || exit 0
  kill -TERM "$pid" 2>/dev/null || exit 0
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || exit 0
    sleep 0.1
  done
  echo "pgbouncer $pid did not stop within 10 s" >&2
  exit 1
fi
[[ $command == start ]] || { echo "unknown command: $command" >&2; exit 2; }

port=${3:?the port to listen on}
server_host=${4:-127.0.0.1}
server_port=${5:-5432}
pool_size=${6:-20}
binary=${PGBOUNCER:-}
if [[ -z $binary ]]; then
  if [[ -x /usr/sbin/pgbouncer ]]; then binary=/usr/sbin/pgbouncer; else binary=$(command -v pgbouncer || true); fi
fi
[[ -n $binary && -x $binary ]] || { echo "pgbouncer not found (Debian: apt-get install pgbouncer)" >&2; exit 3; }

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
# `trust` still needs the user listed in the auth file.
printf '"postgres" ""\n' >"$dir/userlist.txt"
cat >"$dir/pgbouncer.ini" <<EOF
[databases]
* = host=$server_host port=$server_port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
admin_users = postgres
pool_mode = transaction
default_pool_size = $pool_size
max_client_conn = 1000
max_db_connections = 0
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
; psycopg sends no startup parameter PgBouncer refuses; drivers that send this one (JDBC) would.
ignore_startup_parameters = extra_float_digits
EOF
rm -f "$dir/pgbouncer.pid"
run_as=()
if [[ $(id -u) == 0 ]]; then
  # PgBouncer refuses to run as root.
  chown -R postgres "$dir"
  run_as=(-u postgres)
fi
"$binary" -d "${run_as[@]}" "$dir/pgbouncer.ini"
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "pgbouncer $(pid_of) on 127.0.0.1:$port (transaction pooling) -> $server_host:$server_port"
    exit 0
  fi
  sleep 0.1
done
echo "pgbouncer did not listen on 127.0.0.1:$port within 10 s:" >&2
tail -20 "$dir/pgbouncer.log" >&2 || true
exit 1
