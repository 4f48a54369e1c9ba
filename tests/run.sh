#!/usr/bin/env bash
# The test command: every test, on every backend.
#
# 1. `cargo test` on SQLite: the unit tests (the PostgreSQL store's among them) and the
#    integration suite;
# 2. the integration suite again on PostgreSQL (`BGQ_TEST_DATABASE`).
#
# PostgreSQL is the server `BGQ_TEST_POSTGRES` names, else a throwaway one that
# tests/postgres-server.sh starts here and stops at the end. Without PostgreSQL installed the
# second pass is left out with a note, except in CI (`CI=true`), where that is an error.
# Arguments go to every `cargo test` (e.g. a test name to filter on). A server of your own
# (`BGQ_TEST_POSTGRES`) is used as it is; the TLS and password tests then need the roles and
# certificate that tests/postgres-server.sh sets up (`BGQ_TEST_POSTGRES_CA`), else they skip.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${BGQ_TEST_POSTGRES:-}" ]; then
    server_dir=$(mktemp -d "${TMPDIR:-/tmp}/bgq-test-postgres.XXXXXX")
    stop_server() {
        tests/postgres-server.sh stop "$server_dir"
        rm -rf "$server_dir"
    }
    trap stop_server EXIT
    if url=$(tests/postgres-server.sh start "$server_dir"); then
        export BGQ_TEST_POSTGRES=$url
        # The authority of the server's certificate, for the tests of TLS.
        [ ! -f "$server_dir/tls/ca.crt" ] || export BGQ_TEST_POSTGRES_CA=$server_dir/tls/ca.crt
        echo "tests/run.sh: PostgreSQL for the tests at $url"
    elif [ "${CI:-}" = true ]; then
        echo "tests/run.sh: CI needs PostgreSQL for the tests" >&2
        exit 1
    else
        echo "tests/run.sh: note: no PostgreSQL, so the PostgreSQL pass is left out" >&2
    fi
fi

status=0
echo "tests/run.sh: pass 1 of 2, SQLite"
BGQ_TEST_DATABASE="" cargo test --locked "$@" || status=$?
if [ -n "${BGQ_TEST_POSTGRES:-}" ]; then
    echo "tests/run.sh: pass 2 of 2, PostgreSQL"
    BGQ_TEST_DATABASE=$BGQ_TEST_POSTGRES cargo test --locked --test integration "$@" || status=$?
fi
exit "$status"
