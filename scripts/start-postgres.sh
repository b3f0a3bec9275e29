#!/usr/bin/env bash
# Start Debian's PostgreSQL cluster on 127.0.0.1 and create the gridvm test database,
# idempotently.  Prints nothing on success but a log line.
set -euo pipefail
log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

ver="$(ls /usr/lib/postgresql | sort -V | tail -1)"
cluster="$(pg_lsclusters -h 2>/dev/null | awk -v v="$ver" '$1==v {print $2; exit}')"
if [ -z "$cluster" ]; then
    pg_createcluster "$ver" main >/dev/null
    cluster=main
fi
conf="/etc/postgresql/$ver/$cluster/postgresql.conf"
grep -q "^listen_addresses = '127.0.0.1'" "$conf" || \
    echo "listen_addresses = '127.0.0.1'" >> "$conf"
if ! pg_lsclusters -h | awk -v v="$ver" -v c="$cluster" '$1==v && $2==c {print $4}' | grep -q online; then
    log "starting PostgreSQL $ver/$cluster"
    pg_ctlcluster "$ver" "$cluster" start
fi
port="$(pg_lsclusters -h | awk -v v="$ver" -v c="$cluster" '$1==v && $2==c {print $3}')"
psql_as_pg() { su postgres -c "psql -p $port -tAc \"$1\""; }
if [ "$(psql_as_pg "SELECT 1 FROM pg_roles WHERE rolname='gridvm'")" != "1" ]; then
    psql_as_pg "CREATE ROLE gridvm LOGIN PASSWORD 'gridvm' CREATEDB" >/dev/null
fi
if [ "$(psql_as_pg "SELECT 1 FROM pg_database WHERE datname='gridvm_test'")" != "1" ]; then
    psql_as_pg "CREATE DATABASE gridvm_test OWNER gridvm" >/dev/null
fi
log "PostgreSQL on 127.0.0.1:$port (postgresql+psycopg://gridvm:gridvm@127.0.0.1:$port/gridvm_test)"
echo "postgresql+psycopg://gridvm:gridvm@127.0.0.1:$port/gridvm_test" > /var/lib/gridvm/test-postgres-url
