# shellcheck shell=bash
# Sourced by scripts/device-gpu-check and scripts/device-gpu-bench, which run on a borrowed GPU
# machine from the repository root with .device/ (scripts/device-gpu-prepare) carried: starts
# `nimbus dev` (container driver) with a one-GPU type matching this host's GPU, launches an
# instance through the Lambda API, runs commands inside it, and tears it all down again.
#
# Uses: B (the nimbus binary), W (a work directory), OUT (results). Sets: DEVICE_ID (the
# instance, empty when launch failed), DEVICE_DEV_PID, DEVICE_DATA (nimbus dev's data dir),
# NIMBUS_URL and NIMBUS_API_KEY (exported, for "$B" instance ...).
# `nimbus dev` always gets `--gpu-reset never`: the device machine's GPU must never be reset.

B=${B:-/tmp/nimbus-device/nimbus}
W=${W:-/tmp/nimbus-device}
DEVICE_ID=
DEVICE_DEV_PID=
DEVICE_DATA=$W/dev

# Unpacks .device/nimbus.xz to $B (afresh: a warm machine may have an older one).
device_nimbus() {
    mkdir -p "$W"
    if ! { xz -dc .device/nimbus.xz > "$B" && chmod +x "$B"; }; then
        echo "no .device/nimbus.xz: run scripts/device-gpu-prepare here first"
        return 1
    fi
}

# device_instance_up NAME: the image, config.toml, `nimbus dev`, an SSH key and an instance
# called NAME. Returns 1 only when nothing was started (the image would not unpack); a failed
# launch leaves DEVICE_ID as the launch printed it (empty, or an instance that never became
# active, still to be terminated) with nimbus dev running, for device_instance_down.
device_instance_up() {
    local name=$1 model pattern gpus key url ip
    model=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
    pattern=${model#NVIDIA }
    gpus=1
    if [[ -z $model ]]; then
        echo "no GPU here: a dry run of the same steps with a CPU-only type"
        pattern="" gpus=0
    fi
    mkdir -p "$W/images/debian-12/rootfs"
    xz -dc .device/image.tar.xz | tar -C "$W/images/debian-12/rootfs" -xf - || { echo "image unpack failed"; return 1; }
    cat > "$W/config.toml" <<TOML
[[instance_types]]
name = "gpu_1x_check"
description = "1x ${pattern} (device check)"
gpu_description = "${pattern}"
price_cents_per_hour = 100
vcpus = 2
memory_gib = 8
storage_gib = 20
gpus = ${gpus}
gpu_model = "${pattern}"
TOML
    key=device-check-key-0123456789
    url=http://127.0.0.1:18080
    # A machine kept warm since an earlier call may still have that call's state: start afresh.
    [[ -e $DEVICE_DATA ]] && DEVICE_DATA=$W/dev-$$
    "$B" dev --help 2>&1 | grep -q -- '--gpu-reset' \
        || echo "warning: this nimbus has no --gpu-reset flag (rebuild .device with scripts/device-gpu-prepare); nimbus dev will refuse it"
    "$B" dev --listen 127.0.0.1:18080 --data-dir "$DEVICE_DATA" --images-dir "$W/images" --config "$W/config.toml" --api-key "$key" --gpu-reset never > "$OUT/dev.log" 2>&1 &
    DEVICE_DEV_PID=$!
    export NIMBUS_URL=$url NIMBUS_API_KEY=$key
    for _ in $(seq 1 100); do "$B" types > "$OUT/types.txt" 2>/dev/null && break; sleep 0.3; done
    cat "$OUT/types.txt"
    rm -f "$W/id" "$W/id.pub"
    if command -v ssh-keygen > /dev/null; then
        ssh-keygen -q -t ed25519 -N '' -f "$W/id" && "$B" ssh-key add me --public-key-file "$W/id.pub"
    else
        "$B" ssh-key generate me > "$W/id" && chmod 600 "$W/id"
    fi
    DEVICE_ID=$(timeout 150 "$B" instance launch --type gpu_1x_check --ssh-key me --name "$name" --wait) \
        || echo "launch or wait failed: $DEVICE_ID"
    "$B" instance list | tee "$W/instances.txt"
    # A warm machine's known_hosts may hold an earlier instance's key for the same address,
    # which ssh (StrictHostKeyChecking=accept-new) would refuse.
    ip=$(awk -v id="$DEVICE_ID" '$1 == id && NF >= 6 { print $NF }' "$W/instances.txt")
    [[ -n $DEVICE_ID && -n $ip ]] && ssh-keygen -R "$ip" > /dev/null 2>&1
    return 0
}

# device_instance_exec ID COMMAND: runs COMMAND (a shell command line) inside the instance,
# standard input and output passed through: over SSH as ubuntu, or, where this machine has no
# ssh client (or NIMBUS_CHECK_NSENTER is set), as root through nsenter into the namespaces of
# the instance's first process that is not in ours (the launcher in its cgroup is not), having
# joined its cgroups (so its limits and device filter apply as to a process started inside).
# DEVICE_EXEC_TIMEOUT: seconds (default 60).
device_instance_exec() {
    local id=$1 cmd=$2 self pid='' p
    local -a procs
    if [[ -z ${NIMBUS_CHECK_NSENTER:-} ]] && command -v ssh > /dev/null; then
        timeout "${DEVICE_EXEC_TIMEOUT:-60}" "$B" instance ssh "$id" -i "$W/id" -- "$cmd"
        return
    fi
    mapfile -t procs < <(find /sys/fs/cgroup -path "*$id*" -name cgroup.procs 2>/dev/null)
    self=$(readlink /proc/self/ns/mnt)
    for p in $( ((${#procs[@]})) && sort -un "${procs[@]}" 2>/dev/null); do
        if [[ $(readlink "/proc/$p/ns/mnt" 2>/dev/null || echo "$self") != "$self" ]]; then pid=$p; break; fi
    done
    echo "no ssh client here; nsenter into pid ${pid:-none}" >&2
    [[ -n $pid ]] || return 1
    # shellcheck disable=SC2016 # $$ and $1.. are the inner shell's
    timeout "${DEVICE_EXEC_TIMEOUT:-60}" sh -c '
        pid=$1 cmd=$2; shift 2
        for f in "$@"; do echo $$ > "$f" 2>/dev/null || echo "could not join $f" >&2; done
        exec nsenter -t "$pid" -m -u -i -n -p -- sh -c "$cmd"' _ "$pid" "$cmd" "${procs[@]}"
}

# device_instance_down: terminates the instance, stops nimbus dev, prints the ends of its log
# and of the instance's console.log.
device_instance_down() {
    if [[ -n $DEVICE_ID ]]; then
        "$B" instance terminate "$DEVICE_ID"
        sleep 2
    fi
    if [[ -n $DEVICE_DEV_PID ]]; then
        kill "$DEVICE_DEV_PID" 2>/dev/null; wait "$DEVICE_DEV_PID" 2>/dev/null
    fi
    tail -n 40 "$OUT/dev.log"
    find "$DEVICE_DATA" -name console.log -exec sh -c 'echo "-- $1"; tail -n 30 "$1"' _ {} \; 2>/dev/null | tail -n 60
}
