#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests, in a folder of its own.
#
#   tests/postgres-server.sh start DIR   starts one in DIR (made if missing), prints its URL
#   tests/postgres-server.sh stop DIR    stops it (DIR can then be removed)
#   tests/postgres-server.sh restart DIR restarts it on the same port (a fast shutdown: every
#                                        session is ended, as in a real restart)
#
# It uses Debian's packages (/usr/lib/postgresql/<version>/bin, the newest there) or initdb and
# pg_ctl from PATH; BGQ_TEST_POSTGRES_BIN=DIR names another server's bin folder (an older major
# version, say; psql then comes from PATH when DIR has none). PostgreSQL refuses to run as root, so under root the server runs as the
# `postgres` user (made by Debian's package), else as `nobody`. It listens on 127.0.0.1 on the
# first free port from 54400, trusts local connections and does not fsync: it holds nothing
# worth keeping. Exits 1 with a one-line reason when no PostgreSQL is installed.
#
# For the tests of connecting: it serves TLS with a certificate for `localhost` (not for
# 127.0.0.1) signed by a throwaway authority, DIR/tls/ca.crt (with openssl, when installed);
# besides the trusted role bgq_test, role bgq_pw must give its password, `bgq-secret`, and role
# bgq_tls may connect only over TLS. Both are members of bgq_test, so they may use its queues.
set -euo pipefail

usage() { echo "usage: $0 start|stop|restart DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
dir=$2

bin=${BGQ_TEST_POSTGRES_BIN:-}
[ -z "$bin" ] || [ -x "$bin/initdb" ] || { echo "$0: BGQ_TEST_POSTGRES_BIN=$bin holds no initdb" >&2; exit 1; }
[ -n "$bin" ] || for candidate in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$candidate/initdb" ]; then bin=$candidate; break; fi
done
if [ -z "$bin" ] && command -v initdb >/dev/null 2>&1; then
    bin=$(dirname "$(command -v initdb)")
fi
if [ -z "$bin" ]; then
    echo "$0: no PostgreSQL found (install Debian's postgresql package)" >&2
    exit 1
fi

as_owner=()
if [ "$(id -u)" -eq 0 ]; then
    owner=postgres
    id -u "$owner" >/dev/null 2>&1 || owner=nobody
    as_owner=(runuser -u "$owner" --)
fi

case $action in
start)
    mkdir -p "$dir"
    [ ${#as_owner[@]} -eq 0 ] || chown "$owner" "$dir"
    port=54400
    while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        port=$((port + 1))
    done
    "${as_owner[@]}" "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 ||
        { echo "$0: initdb failed, see $dir/initdb.log" >&2; exit 1; }
    tls_options=""
    if command -v openssl >/dev/null 2>&1; then
        mkdir -p "$dir/tls"
        (
            cd "$dir/tls"
            openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=bgq test authority" \
                -keyout ca.key -out ca.crt
            openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr
            printf 'subjectAltName=DNS:localhost\n' >san.ext
            openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
                -extfile san.ext -out server.crt
        ) >"$dir/tls.log" 2>&1 || { echo "$0: openssl failed, see $dir/tls.log" >&2; exit 1; }
        chmod 600 "$dir/tls/server.key"
        [ ${#as_owner[@]} -eq 0 ] || chown -R "$owner" "$dir/tls"
        chmod 755 "$dir/tls"
        tls_options="-c ssl=on -c ssl_cert_file=$dir/tls/server.crt -c ssl_key_file=$dir/tls/server.key"
    fi
    printf '%s\n' 'host all bgq_pw 127.0.0.1/32 scram-sha-256' \
        'hostnossl all bgq_tls 127.0.0.1/32 reject' 'hostssl all bgq_tls 127.0.0.1/32 trust' >"$dir/hba.head"
    cat "$dir/hba.head" "$dir/data/pg_hba.conf" >"$dir/hba.conf"
    [ ${#as_owner[@]} -eq 0 ] || chown "$owner" "$dir/hba.conf"
    "${as_owner[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c full_page_writes=off -c synchronous_commit=off -c max_connections=400 -c password_encryption=scram-sha-256 -c hba_file=$dir/hba.conf $tls_options" \
        start >/dev/null ||
        { echo "$0: the server did not start, see $dir/server.log" >&2; exit 1; }
    psql=$bin/psql
    [ -x "$psql" ] || psql=psql
    "$psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
        -c "CREATE ROLE bgq_test LOGIN" -c "CREATE DATABASE bgq_test OWNER bgq_test" \
        -c "CREATE ROLE bgq_pw LOGIN PASSWORD 'bgq-secret' IN ROLE bgq_test" \
        -c "CREATE ROLE bgq_tls LOGIN IN ROLE bgq_test" >/dev/null
    echo "postgres://bgq_test@127.0.0.1:$port/bgq_test"
    ;;
restart)
    # pg_ctl restart starts the server again with the options it was started with (its
    # postmaster.opts), port included; the log file must be named again.
    "${as_owner[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -m fast -w -t 60 restart >/dev/null ||
        { echo "$0: the server did not restart, see $dir/server.log" >&2; exit 1; }
    ;;
stop)
    [ -d "$dir/data" ] || exit 0
    "${as_owner[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    ;;
*)
    usage
    ;;
esac
