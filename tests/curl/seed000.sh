#!/usr/bin/env bash
# The curl recipes of Lambda's Cloud API documentation (seed 000), run against a Nimbus server.
#
#   tests/curl/seed000.sh URL API-KEY        e.g. tests/curl/seed000.sh http://127.0.0.1:8080 nmb_...
#
# Each recipe is sent the way the docs write it: `curl -u API-KEY: URL/api/v1/... -d @file.json
# -H "Content-Type: application/json"`, and the POST recipes also without the Content-Type header
# (curl then sends application/x-www-form-urlencoded; the body must still be read as JSON), and
# DELETE as `curl -u API-KEY: -X DELETE ...`. Results are checked with jq. The script stops at the
# first failure with a non-zero exit status; what it created is removed on the way out.
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 URL API-KEY" >&2
    exit 2
fi
URL=${1%/}
URL=${URL%/api/v1}
KEY=$2
API=$URL/api/v1
POLL_TIMEOUT=60

for tool in curl jq ssh-keygen; do
    command -v "$tool" >/dev/null || { echo "seed000: $tool is required" >&2; exit 2; }
done

T=$(mktemp -d -t nimbus-seed000.XXXXXX)
RUN=$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')
CREATED_INSTANCES=()
CREATED_KEYS=()
STEP=0

cleanup() {
    local rc=$?
    set +e
    for id in "${CREATED_INSTANCES[@]}"; do
        curl -sS -o /dev/null -u "$KEY:" "$API/instance-operations/terminate" -d "{\"instance_ids\": [\"$id\"]}"
    done
    for id in "${CREATED_KEYS[@]}"; do
        curl -sS -o /dev/null -u "$KEY:" -X DELETE "$API/ssh-keys/$id"
    done
    rm -rf "$T"
    if [[ $rc -eq 0 ]]; then
        echo "seed000: ALL OK"
    fi
    exit $rc
}
trap cleanup EXIT

step() {
    STEP=$((STEP + 1))
    printf '\n[seed000] %02d %s\n' "$STEP" "$*"
}

fail() {
    echo "" >&2
    echo "[seed000] FAILED at step $STEP: $*" >&2
    if [[ -s $T/body ]]; then
        echo "[seed000] last response (HTTP $(cat "$T/status" 2>/dev/null)):" >&2
        head -c 3000 "$T/body" >&2
        echo >&2
    fi
    exit 1
}

# c ARGS...: run `curl -u KEY: ARGS...` as the docs do; the status goes to $T/status, the body to
# $T/body, and the body is shown through `jq .` like the recipes' `| jq .`.
c() {
    local shown
    shown=$(printf ' %q' "$@")
    echo "\$ curl -u API-KEY:${shown//$URL/URL} | jq ."
    local status
    status=$(curl -sS -u "$KEY:" -o "$T/body" -w '%{http_code}' "$@") || fail "curl itself failed"
    echo "$status" >"$T/status"
    if jq . "$T/body" >"$T/pretty" 2>/dev/null; then
        head -c 4000 "$T/pretty"
        [[ $(wc -c <"$T/pretty") -le 4000 ]] || echo "... (truncated)"
    else
        head -c 2000 "$T/body"
        echo
    fi
    echo "  -> HTTP $status"
}

# expect STATUS: the last response had that HTTP status and a JSON body
expect() {
    [[ $(cat "$T/status") == "$1" ]] || fail "expected HTTP $1, got $(cat "$T/status")"
    jq -e . "$T/body" >/dev/null || fail "body is not JSON"
}

# j FILTER [MESSAGE]: jq -e FILTER holds on the last body
j() {
    jq -e "$1" "$T/body" >/dev/null || fail "${2:-check failed}: jq '$1'"
}

# val FILTER: print jq -r FILTER of the last body
val() {
    jq -r "$1" "$T/body"
}

wait_status() { # ID STATUS: GET /instances/ID until status == STATUS
    local id=$1 want=$2 deadline=$((SECONDS + POLL_TIMEOUT)) st
    while :; do
        st=$(curl -sS -u "$KEY:" "$API/instances/$id" | jq -r '.data.status // empty')
        [[ $st == "$want" ]] && { echo "  instance $id is $st"; return 0; }
        [[ $SECONDS -ge $deadline ]] && fail "instance $id not $want after ${POLL_TIMEOUT}s (status: ${st:-?})"
        sleep 0.5
    done
}

wait_gone() { # ID: GET /instances until ID is no longer listed
    local id=$1 deadline=$((SECONDS + POLL_TIMEOUT))
    while :; do
        if ! curl -sS -u "$KEY:" "$API/instances" | jq -e --arg id "$id" '.data | map(.id) | index($id)' >/dev/null; then
            echo "  instance $id left GET /instances"
            return 0
        fi
        [[ $SECONDS -ge $deadline ]] && fail "instance $id still listed ${POLL_TIMEOUT}s after terminate"
        sleep 0.5
    done
}

forget_instance() {
    local keep=() x
    for x in "${CREATED_INSTANCES[@]}"; do [[ $x == "$1" ]] || keep+=("$x"); done
    CREATED_INSTANCES=("${keep[@]+"${keep[@]}"}")
}

cd "$T"

# ---------------------------------------------------------------------------------------------
step "List instance types: curl -u API-KEY: .../instance-types | jq ."
c "$API/instance-types"
expect 200
j '.data | type == "object" and length > 0' "no instance types"
j '[.data | to_entries[] | .key == .value.instance_type.name] | all' "keys differ from instance_type.name"
TYPE=$(val '[.data | to_entries[] | select(.value.regions_with_capacity_available | length > 0)]
            | sort_by(.value.instance_type.price_cents_per_hour, .key) | .[0].key // empty')
[[ -n $TYPE ]] || fail "no instance type has regions_with_capacity_available"
REGION=$(jq -r --arg t "$TYPE" '.data[$t].regions_with_capacity_available[0].name' "$T/body")
echo "  chose $TYPE in $REGION (cheapest type with capacity)"

# ---------------------------------------------------------------------------------------------
step "List SSH keys: curl -u API-KEY: .../ssh-keys | jq ."
c "$API/ssh-keys"
expect 200
j '.data | type == "array"'

ssh-keygen -q -t ed25519 -N '' -C "seed000@nimbus" -f "$T/id1"
ssh-keygen -q -t ed25519 -N '' -C "seed000-2@nimbus" -f "$T/id2"
PUB1=$(cat "$T/id1.pub")
PUB2=$(cat "$T/id2.pub")
KEY1="my-new-key-$RUN"
KEY2="my-new-key-noct-$RUN"
GEN1="my-generated-key-$RUN"
GEN2="my-generated-key-noct-$RUN"

step "Add an existing SSH key: -d @ssh-key.json -H \"Content-Type: application/json\""
jq -n --arg n "$KEY1" --arg k "$PUB1" '{name: $n, public_key: $k}' >ssh-key.json
cat ssh-key.json
c "$API/ssh-keys" -d @ssh-key.json -H "Content-Type: application/json"
expect 200
j ".data.name == \"$KEY1\"" "name"
[[ $(val '.data.public_key') == "$PUB1" ]] || fail "public_key not returned byte-identical"
j '.data.id | type == "string" and length > 0' "id"
j '.data.private_key == null' "uploaded key came back with a private_key"
CREATED_KEYS+=("$(val .data.id)")

step "Add an existing SSH key without the Content-Type header (curl sends x-www-form-urlencoded)"
jq -n --arg n "$KEY2" --arg k "$PUB2" '{name: $n, public_key: $k}' >ssh-key.json
c "$API/ssh-keys" -d @ssh-key.json
expect 200
j ".data.name == \"$KEY2\""
[[ $(val '.data.public_key') == "$PUB2" ]] || fail "public_key not returned byte-identical"
CREATED_KEYS+=("$(val .data.id)")

step "Add an SSH key whose name is taken -> 400 global/invalid-parameters"
c "$API/ssh-keys" -d @ssh-key.json -H "Content-Type: application/json"
expect 400
j '.error.code == "global/invalid-parameters"' "error code"
j '.error.message | type == "string" and length > 0' "error message"

step "Generate a new SSH key pair: -d '{ \"name\": \"...\" }' ... | jq -r '.data.private_key' > my-generated-private-key.pem"
echo "\$ curl -u API-KEY: URL/api/v1/ssh-keys -d '{ \"name\": \"$GEN1\" }' -H \"Content-Type: application/json\" | jq -r '.data.private_key' > my-generated-private-key.pem"
curl -sS -u "$KEY:" "$API/ssh-keys" -d "{ \"name\": \"$GEN1\" }" -H "Content-Type: application/json" | tee "$T/body" | jq -r '.data.private_key' >my-generated-private-key.pem
echo 200 >"$T/status"
GEN1_ID=$(val '.data.id // empty')
[[ -n $GEN1_ID ]] || fail "generate: no id in response"
CREATED_KEYS+=("$GEN1_ID")
GEN1_PUB=$(val '.data.public_key')
chmod 400 my-generated-private-key.pem
grep -q "PRIVATE KEY" my-generated-private-key.pem || fail "my-generated-private-key.pem is not a private key"
DERIVED=$(ssh-keygen -y -f my-generated-private-key.pem) || fail "ssh-keygen cannot read the generated private key"
[[ $(echo "$DERIVED" | cut -d' ' -f1,2) == $(echo "$GEN1_PUB" | cut -d' ' -f1,2) ]] || fail "private key does not match the returned public_key"
echo "  my-generated-private-key.pem is the private half of $(echo "$GEN1_PUB" | cut -c1-40)..."

step "Generate a new SSH key pair without the Content-Type header"
c "$API/ssh-keys" -d "{ \"name\": \"$GEN2\" }"
expect 200
j '.data.private_key | type == "string" and contains("PRIVATE KEY")' "private_key"
CREATED_KEYS+=("$(val .data.id)")

step "List the SSH keys: curl -u API-KEY: .../ssh-keys | jq .  (public keys byte-identical, no private keys)"
c "$API/ssh-keys"
expect 200
for n in "$KEY1" "$KEY2" "$GEN1" "$GEN2"; do
    j ".data | map(.name) | index(\"$n\") != null" "key $n not listed"
done
[[ $(jq -r --arg n "$KEY1" '.data[] | select(.name == $n) | .public_key' "$T/body") == "$PUB1" ]] || fail "listed public_key of $KEY1 differs"
[[ $(jq -r --arg n "$GEN1" '.data[] | select(.name == $n) | .public_key' "$T/body") == "$GEN1_PUB" ]] || fail "listed public_key of $GEN1 differs"
j '[.data[] | has("private_key") and .private_key != null] | any | not' "a listed key carries private_key"

# ---------------------------------------------------------------------------------------------
step "Launch with the docs' literal payload (gpu_1x_a100_sxm4 in us-east-1): 200 or 400 insufficient-capacity"
cat >request.json <<EOF
{
  "region_name": "us-east-1",
  "instance_type_name": "gpu_1x_a100_sxm4",
  "ssh_key_names": [
    "$KEY1"
  ],
  "file_system_names": [],
  "quantity": 1
}
EOF
cat request.json
c "$API/instance-operations/launch" -d @request.json -H "Content-Type: application/json"
case $(cat "$T/status") in
200)
    j '.data.instance_ids | type == "array" and length == 1' "instance_ids"
    LIT=$(val '.data.instance_ids[0]')
    CREATED_INSTANCES+=("$LIT")
    echo "  launched $LIT; terminating it"
    c "$API/instance-operations/terminate" -d "{\"instance_ids\": [\"$LIT\"]}" -H "Content-Type: application/json"
    expect 200
    wait_gone "$LIT"
    forget_instance "$LIT"
    ;;
400)
    j '.error.code == "instance-operations/launch/insufficient-capacity"' "400 must be insufficient-capacity"
    j '.error.message | type == "string" and length > 0' "message"
    echo "  no capacity for gpu_1x_a100_sxm4 here, as allowed"
    ;;
*) fail "expected 200 or 400, got $(cat "$T/status")" ;;
esac

launch_recipe() { # NAME [curl header args...]: launch $TYPE in $REGION from request.json, echo the id
    local name=$1
    shift
    jq -n --arg r "$REGION" --arg t "$TYPE" --arg k "$KEY1" --arg n "$name" \
        '{region_name: $r, instance_type_name: $t, ssh_key_names: [$k], file_system_names: [], quantity: 1, name: $n}' >request.json
    cat request.json
    c "$API/instance-operations/launch" -d @request.json "$@"
    expect 200
    j '.data.instance_ids | type == "array" and length == 1' "instance_ids"
}

NAME_A="seed000-a-$RUN"
step "Launch $TYPE in $REGION: -d @request.json -H \"Content-Type: application/json\""
launch_recipe "$NAME_A" -H "Content-Type: application/json"
A=$(val '.data.instance_ids[0]')
CREATED_INSTANCES+=("$A")
[[ $A =~ ^[0-9a-f]{32}$ ]] || echo "  note: id $A is not 32 lowercase hex characters like Lambda's"

step "List instances: curl -u API-KEY: .../instances | jq .  (the new instance is listed at once)"
c "$API/instances"
expect 200
j ".data | map(.id) | index(\"$A\") != null" "launched instance not listed"
j ".data[] | select(.id == \"$A\") | .name == \"$NAME_A\"" "name"
j ".data[] | select(.id == \"$A\") | .status | IN(\"booting\", \"active\")" "status"

step "Wait until active (GET /instances/ID)"
wait_status "$A" active

step "Get instance details: curl -u API-KEY: .../instances/INSTANCE-ID | jq ."
c "$API/instances/$A"
expect 200
j ".data.id == \"$A\" and .data.status == \"active\"" "id/status"
j ".data.instance_type.name == \"$TYPE\" and .data.region.name == \"$REGION\"" "type/region"
j ".data.ssh_key_names == [\"$KEY1\"]" "ssh_key_names"
j '.data.ip | type == "string" and length > 0' "ip"
j '.data.actions | has("restart") and has("terminate") and has("migrate") and has("rebuild") and has("cold_reboot")' "actions"

step "Restart: -d @INSTANCE-IDS -H \"Content-Type: application/json\""
printf '{\n  "instance_ids": [\n    "%s"\n  ]\n}\n' "$A" >INSTANCE-IDS
cat INSTANCE-IDS
c "$API/instance-operations/restart" -d @INSTANCE-IDS -H "Content-Type: application/json"
expect 200
j ".data.restarted_instances | map(.id) == [\"$A\"]" "restarted_instances"
wait_status "$A" active

step "Restart without the Content-Type header"
c "$API/instance-operations/restart" -d @INSTANCE-IDS
expect 200
j ".data.restarted_instances | map(.id) == [\"$A\"]" "restarted_instances"
wait_status "$A" active

step "Terminate: -d @INSTANCE-IDS -H \"Content-Type: application/json\""
c "$API/instance-operations/terminate" -d @INSTANCE-IDS -H "Content-Type: application/json"
expect 200
j ".data.terminated_instances | map(.id) == [\"$A\"]" "terminated_instances"
wait_gone "$A"
forget_instance "$A"
c "$API/instances/$A"
expect 200
j '.data.status == "terminated"' "GET of a terminated instance"

NAME_B="seed000-b-$RUN"
step "Launch without the Content-Type header"
launch_recipe "$NAME_B"
B=$(val '.data.instance_ids[0]')
CREATED_INSTANCES+=("$B")
wait_status "$B" active

step "Terminate without the Content-Type header"
printf '{"instance_ids": ["%s"]}' "$B" >INSTANCE-IDS
c "$API/instance-operations/terminate" -d @INSTANCE-IDS
expect 200
j ".data.terminated_instances | map(.id) == [\"$B\"]" "terminated_instances"
wait_gone "$B"
forget_instance "$B"

# ---------------------------------------------------------------------------------------------
step "List file systems: curl -u API-KEY: .../file-systems | jq ."
c "$API/file-systems"
expect 200
j '.data | type == "array"'

# ---------------------------------------------------------------------------------------------
step "Errors: unknown instance -> 404 global/object-does-not-exist; wrong key -> 401 global/invalid-api-key"
c "$API/instances/00000000000000000000000000000000"
expect 404
j '.error.code == "global/object-does-not-exist"' "404 code"
echo "\$ curl -u WRONG-KEY: URL/api/v1/instances | jq ."
st=$(curl -sS -u "nmb_wrong_key_000000000000000000:" -o "$T/body" -w '%{http_code}' "$API/instances")
echo "$st" >"$T/status"
jq . "$T/body"
expect 401
j '.error.code == "global/invalid-api-key"' "401 code"
j '.error.message | type == "string" and length > 0' "401 message"

# ---------------------------------------------------------------------------------------------
step "Delete the SSH keys: curl -u API-KEY: -X DELETE .../ssh-keys/SSH-KEY-ID"
for id in "${CREATED_KEYS[@]}"; do
    echo "\$ curl -u API-KEY: -X DELETE URL/api/v1/ssh-keys/$id"
    st=$(curl -sS -u "$KEY:" -X DELETE -o "$T/body" -w '%{http_code}' "$API/ssh-keys/$id")
    echo "$st" >"$T/status"
    cat "$T/body"
    echo "  -> HTTP $st"
    expect 200
done
c "$API/ssh-keys"
expect 200
for n in "$KEY1" "$KEY2" "$GEN1" "$GEN2"; do
    j ".data | map(.name) | index(\"$n\") == null" "deleted key $n still listed"
done
CREATED_KEYS=()
