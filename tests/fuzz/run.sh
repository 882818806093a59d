#!/usr/bin/env bash
# Property-based fuzzing of every dialect with schemathesis: the native API from the OpenAPI
# document the server itself serves (/v1/openapi.json), the Lambda, Voltage Park and clusters
# dialects from their checked-in documents (openapi/*.json, generated from the handlers and
# drift-tested). A real `nimbus dev --driver sim` (SQLite, real HTTP) on a free loopback port;
# the run fails on any 5xx, any response that violates the document (schema, status code,
# content type), or a panic in the server's log. The other dialects get half the examples.
#
#   tests/fuzz/run.sh NIMBUS_BINARY SCHEMATHESIS_BINARY [EXAMPLES_PER_OPERATION]
set -euo pipefail
NIMBUS=${1:?nimbus binary}
ST=${2:?schemathesis binary}
N=${3:-100}
DIR=$(mktemp -d /tmp/nimbus-fuzz.XXXXXX)
PORT=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
KEY="fuzz-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
"$NIMBUS" dev --driver sim --listen "127.0.0.1:$PORT" --data-dir "$DIR" --api-key "$KEY" >"$DIR/nimbus.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null || { cat "$DIR/nimbus.log" >&2; echo "nimbus dev did not start" >&2; exit 1; }
# The key the fuzzer authenticates with must survive the run, so revoking keys is left out here
# (crates/nimbus-test-utils/tests/api/account.rs tests it).
DOCS=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../openapi" && pwd)
cd "$DIR"
CHECKS=not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance
"$ST" run "http://127.0.0.1:$PORT/v1/openapi.json" \
    -H "Authorization: Bearer $KEY" \
    --checks "$CHECKS" \
    --exclude-operation-id api_key_delete \
    --max-examples "$N" --generation-database none --no-color
for doc in lambda voltage clusters; do
    echo "== schemathesis over openapi/$doc.json"
    "$ST" run "$DOCS/$doc.json" --url "http://127.0.0.1:$PORT/api/v1" \
        -H "Authorization: Bearer $KEY" \
        --checks "$CHECKS" \
        --max-examples "$(((N + 1) / 2))" --generation-database none --no-color
done
if grep -q "panicked" "$DIR/nimbus.log"; then
    grep -B2 -A10 panicked "$DIR/nimbus.log" >&2
    echo "the server panicked during the fuzz run" >&2
    exit 1
fi
