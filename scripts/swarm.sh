#!/usr/bin/env bash
# A real Docker Swarm of three engines on this one machine, for integration
# tests and the benchmark. Each engine runs in its own network namespace on a
# private bridge (10.77.0.0/24); the host's own dockerd is left alone.
#
# Usage: swarm.sh up | down | status | kill-engine NODE | start-engine NODE
#   up            idempotent; writes /run/pgswarm/swarm.json (see write_state)
#   down          removes everything `up` made; safe when nothing is up
#   kill-engine   SIGKILL one engine's dockerd (a node crash)
#   start-engine  start it again with the same flags; it rejoins by itself
#
# Env: POSTGRAAS_SWARM_TIMEOUT seconds to wait for each step (default 90);
#      POSTGRAAS_CACHE_DIR (default ~/.cache/postgraas) keeps the pushed registry storage.
set -euo pipefail

NODES=(manager worker1 worker2)
declare -A ADDR=([manager]=10.77.0.10 [worker1]=10.77.0.11 [worker2]=10.77.0.12
    [registry]=10.77.0.5 [client]=10.77.0.50)
# Distinct docker0 subnets, none overlapping the host's 172.17.0.0/16.
declare -A BIP=([manager]=172.30.10.1/24 [worker1]=172.30.11.1/24 [worker2]=172.30.12.1/24)
RUN=/run/pgswarm DATA=/var/lib/pgswarm STATE=/run/pgswarm/swarm.json
REGISTRY=${ADDR[registry]}:5000 SRC_IMAGE=postgraas/postgres-test:15
IMAGE=$REGISTRY/$SRC_IMAGE timeout=${POSTGRAAS_SWARM_TIMEOUT:-90}
CACHE=${POSTGRAAS_CACHE_DIR:-${HOME:-/root}/.cache/postgraas}/swarm-registry
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say() { printf 'swarm: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
t0=$(date +%s.%N)
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}'; }
step() { say "[$(elapsed)s] $*"; }
sock() { printf 'unix://%s/%s/docker.sock' "$RUN" "$1"; }
# Bounded, so a wedged engine cannot hang the caller (the long load and push are not).
dk() { local n=$1; shift; timeout 30 docker -H "$(sock "$n")" "$@"; }
answers() { dk "$1" info >/dev/null 2>&1; }

# wait_for WHAT CMD...: poll CMD until it succeeds or the timeout passes.
wait_for() {
    local what=$1 deadline=$((SECONDS + timeout)); shift
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${timeout}s waiting for $what"
        sleep 0.3
    done
}

# pid from a pidfile if it still runs the expected program: never kill a reused pid.
live_pid() {
    local pid
    pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && echo "$pid"
}

# stop_pid PID: SIGTERM, a bounded wait, then SIGKILL.
stop_pid() {
    local pid=$1 _
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 "${2:-60}"); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
    say "pid $pid did not stop; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

net_up() {
    ip netns add pgsw-bridge
    ip -n pgsw-bridge link set lo up
    ip -n pgsw-bridge link add br0 up type bridge
    local n
    for n in "${NODES[@]}" registry client; do
        ip netns add "pgsw-$n"
        ip -n "pgsw-$n" link set lo up
        # Created directly inside the namespaces, so "eth0" never meets the host's.
        ip link add eth0 netns "pgsw-$n" type veth peer name "v-$n" netns pgsw-bridge
        ip -n pgsw-bridge link set "v-$n" master br0 up
        ip -n "pgsw-$n" addr add "${ADDR[$n]}/24" dev eth0 && ip -n "pgsw-$n" link set eth0 up
    done
    # The host's leg: the API server under test runs here and must reach 10.77.0.x.
    ip link add pgsw-host type veth peer name v-host netns pgsw-bridge
    ip -n pgsw-bridge link set v-host master br0 up
    ip addr add 10.77.0.1/24 dev pgsw-host && ip link set pgsw-host up
}

registry_up() {
    mkdir -p "$RUN/registry" "$DATA/registry"
    cat >"$RUN/registry/config.yml" <<EOF
version: 0.1
log: {level: info}
storage:
  filesystem: {rootdirectory: $DATA/registry}
  # A dropped template's manifest is deleted (postgraas_server/backends/swarm/registry_api.py).
  delete: {enabled: true}
http: {addr: "$REGISTRY"}
EOF
    setsid nohup ip netns exec pgsw-registry docker-registry serve "$RUN/registry/config.yml" \
        >>"$RUN/registry/registry.log" 2>&1 </dev/null 9>&- &
    echo $! >"$RUN/registry/registry.pid"
    wait_for "the registry" curl -fs -o /dev/null --max-time 2 "http://$REGISTRY/v2/"
}

# Runs inside `ip netns exec NS unshare --uts`: ip netns exec remounts /sys,
# which hides the cgroup hierarchies dockerd needs ("Devices cgroup isn't
# mounted"), so mount them again - the same ones the host has - then exec.
# shellcheck disable=SC2016
ENGINE_WRAPPER='hostname "$1"; cgroups=$2; shift 2
mount -t tmpfs cgroup /sys/fs/cgroup
while read -r type dir opts; do
    mkdir -p "$dir" && mount -t "$type" -o "$opts" "$type" "$dir"
done <<<"$cgroups"
exec "$@"'

start_engine() {
    local n=$1 args
    mkdir -p "$RUN/$n" "$RUN/bin" "$DATA/$n"
    # Under its own name, so `pgrep -x dockerd` (ensure-docker.sh) finds only the host's engine.
    ln -sfn "$(command -v dockerd)" "$RUN/bin/pgsw-dockerd"
    args=(--data-root "$DATA/$n" --exec-root "$RUN/$n/exec" -H "$(sock "$n")"
        --pidfile "$RUN/$n/dockerd.pid" --containerd-namespace "pgsw-$n"
        --containerd-plugins-namespace "pgsw-$n-plugins" --bip "${BIP[$n]}"
        --cgroup-parent "/pgswarm-$n" --insecure-registry "$REGISTRY")
    [ "$n" = manager ] || args+=(--node-generic-resource pgslots=16 --node-generic-resource pgtiny=1)
    printf '\n==== swarm.sh: starting dockerd at %s ====\n' "$(date -u +%FT%TZ)" >>"$RUN/$n/dockerd.log"
    # setsid + nohup: there is no init system; the engine must outlive this script.
    # 9>&-: it must not inherit (and so hold forever) this script's lock.
    setsid nohup ip netns exec "pgsw-$n" unshare --uts bash -c "$ENGINE_WRAPPER" sh "$n" \
        "$(awk '$3 == "cgroup" || $3 == "cgroup2" {print $3, $2, $4}' /proc/mounts)" \
        "$RUN/bin/pgsw-dockerd" "${args[@]}" >>"$RUN/$n/dockerd.log" 2>&1 </dev/null 9>&- &
    local pid=$! deadline=$((SECONDS + timeout))
    until answers "$n"; do
        if ! kill -0 "$pid" 2>/dev/null && ! live_pid "$RUN/$n/dockerd.pid" pgsw-dockerd >/dev/null; then
            tail -n 20 "$RUN/$n/dockerd.log" >&2; die "dockerd of $n exited during startup"
        fi
        [ "$SECONDS" -lt "$deadline" ] || die "dockerd of $n did not answer within ${timeout}s"
        sleep 0.3
    done
}

stop_engine() {
    local n=$1 pid
    # dockerd stops its containers (10 s each at most) and its containerd.
    if pid=$(live_pid "$RUN/$n/dockerd.pid" pgsw-dockerd); then stop_pid "$pid" 60; fi
    # Whatever is left in the node's namespace: containerd, shims, docker-proxy.
    # shellcheck disable=SC2046
    kill -KILL $(ip netns pids "pgsw-$n" 2>/dev/null) 2>/dev/null || true
    # Containers have namespaces of their own; find them by their cgroup (--cgroup-parent).
    local cgs=(/sys/fs/cgroup/*/"pgswarm-$n") procs
    procs=$(find "${cgs[@]}" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
    # shellcheck disable=SC2086
    [ -z "$procs" ] || { kill -KILL $procs 2>/dev/null; sleep 0.5; }
    find "${cgs[@]}" -depth -type d -exec rmdir {} + 2>/dev/null || true
}

has_ingress() { dk manager network inspect ingress >/dev/null 2>&1; }
all_ready() { [ "$(dk manager node ls --format '{{.Status}}' 2>/dev/null | grep -c '^Ready$')" -eq 3 ]; }

# The image id (= config digest) the registry holds under $IMAGE's tag.
pushed_id() {
    curl -fs --max-time 5 -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        "http://$REGISTRY/v2/${SRC_IMAGE%:*}/manifests/${IMAGE##*:}" | grep -o 'sha256:[0-9a-f]*' | head -n1
}
src_id() { docker image inspect -f '{{.Id}}' "$SRC_IMAGE" 2>/dev/null; }

healthy() { answers worker1 && answers worker2 && all_ready && [ "$(pushed_id)" = "$(src_id)" ]; }

swarm_up() {
    dk manager swarm init --advertise-addr "${ADDR[manager]}" --listen-addr "${ADDR[manager]}:2377" >/dev/null
    local token n
    token=$(dk manager swarm join-token -q worker)
    for n in worker1 worker2; do
        dk "$n" swarm join --token "$token" --advertise-addr "${ADDR[$n]}" \
            --listen-addr "${ADDR[$n]}:2377" "${ADDR[manager]}:2377" >/dev/null
        dk manager node update --label-add postgraas=db "$n" >/dev/null
    done
    # Databases go to workers only.
    dk manager node update --availability drain manager >/dev/null
    wait_for "3 ready nodes" all_ready
    # No IPVS in this kernel, so the routing mesh cannot work; without the ingress
    # network each dockerd also stops in 3 s instead of 5-9 s (no ingress to release).
    # It appears a moment after init; rm may report "not found" yet remove it.
    wait_for "the ingress network" has_ingress
    dk manager network rm ingress <<<y >/dev/null 2>&1 || true
    wait_for "the ingress network's removal" eval '! has_ingress'
}

image_up() {
    [ -n "$(src_id)" ] || "$repo_root/scripts/build-test-images.sh"
    local id; id=$(src_id)
    # The push gzips ~480 MB (about 30 s): reuse the storage of an earlier push of this very image.
    if [ "$(cat "$CACHE/image-id" 2>/dev/null)" = "$id" ]; then
        cp -a "$CACHE/storage/." "$DATA/registry/"
        [ "$(pushed_id)" = "$id" ] && return 0
        say "registry cache in $CACHE is unusable; pushing"
    fi
    # Only the manager gets the image directly; workers must pull it from the registry.
    docker save "$SRC_IMAGE" | docker -H "$(sock manager)" load -q >/dev/null
    dk manager tag "$SRC_IMAGE" "$IMAGE"
    docker -H "$(sock manager)" push -q "$IMAGE" >/dev/null
    [ "$(pushed_id)" = "$id" ] || die "the registry does not hold $IMAGE after the push"
    rm -rf "$CACHE" && mkdir -p "$CACHE"
    cp -a "$DATA/registry" "$CACHE/storage" && echo "$id" >"$CACHE/image-id"
}

write_state() {
    cat >"$STATE.tmp" <<EOF
{"manager": "$(sock manager)", "manager_address": "${ADDR[manager]}",
 "workers": {"worker1": {"address": "${ADDR[worker1]}", "base_url": "$(sock worker1)"},
             "worker2": {"address": "${ADDR[worker2]}", "base_url": "$(sock worker2)"}},
 "registry": "$REGISTRY", "image": "$IMAGE", "client_netns": "pgsw-client",
 "slots_resource": "pgslots", "tiny_resource": "pgtiny"}
EOF
    mv "$STATE.tmp" "$STATE"
}

cmd_down() {
    local n pid pids=()
    if answers manager; then
        dk manager service ls -q | xargs -r timeout 30 docker -H "$(sock manager)" service rm >/dev/null || true
    fi
    # In parallel: each dockerd (and the registry) takes seconds to stop.
    for n in "${NODES[@]}"; do stop_engine "$n" & pids+=($!); done
    if pid=$(live_pid "$RUN/registry/registry.pid" docker-registry); then stop_pid "$pid" 20 & pids+=($!); fi
    for pid in "${pids[@]}"; do wait "$pid" || true; done
    for n in "${NODES[@]}" registry client bridge; do
        ip netns pids "pgsw-$n" >/dev/null 2>&1 || continue
        # shellcheck disable=SC2046
        kill -KILL $(ip netns pids "pgsw-$n") 2>/dev/null || true
        ip netns del "pgsw-$n"
    done
    ! ip link show pgsw-host >/dev/null 2>&1 || ip link del pgsw-host
    # Two workers' image layers take seconds to delete: move them aside, delete in the background.
    rm -rf "$RUN"
    if [ -d "$DATA" ]; then mv "$DATA" "$DATA.gone.$$"; fi
    # shellcheck disable=SC2016
    setsid nohup bash -c 'rm -rf "$1".gone.*' sh "$DATA" >/dev/null 2>&1 </dev/null 9>&- &
}

cmd_up() {
    if healthy; then write_state; say "already up and healthy; state in $STATE"; return 0; fi
    # Anything half made is torn down: a fresh swarm is quick and predictable.
    cmd_down
    if ! command -v docker-registry >/dev/null 2>&1; then
        # A fresh machine (CI): the registry nodes pull from comes from Debian.
        step "installing docker-registry with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry >/dev/null ||
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry >/dev/null; }
    fi
    mkdir -p "$RUN" "$DATA"
    step "torn down; creating namespaces"
    net_up
    registry_up
    step "registry answering; starting engines"
    # The three engines start in parallel (each takes a few seconds).
    local n pids=()
    for n in "${NODES[@]}"; do start_engine "$n" & pids+=($!); done
    for n in "${pids[@]}"; do wait "$n" || die "an engine failed to start"; done
    step "engines answering; forming the swarm"
    swarm_up
    step "swarm ready; putting $IMAGE into the registry"
    image_up
    write_state
    say "up in $(elapsed)s; state in $STATE"
}

case "${1:-}" in
    up | down | status) ;;
    kill-engine | start-engine) [[ " ${NODES[*]} " == *" ${2:-?} "* ]] || die "NODE: one of ${NODES[*]}" ;;
    *) sed -n '2,13p' "${BASH_SOURCE[0]}"; exit 2 ;;
esac
[ "$(id -u)" -eq 0 ] || die "must run as root (network namespaces, mounts)"
# One at a time: tests and people may call this concurrently (outside $RUN: down removes that).
if [ "$1" != status ]; then
    exec 9>/run/pgswarm.lock
    flock -w $((timeout * 4)) 9 || die "another swarm.sh still holds /run/pgswarm.lock"
fi
case "$1" in
    up) cmd_up ;;
    down) cmd_down; say "down" ;;
    status) dk manager node ls && dk manager service ls ;;
    kill-engine)
        pid=$(live_pid "$RUN/$2/dockerd.pid" pgsw-dockerd) || die "dockerd of $2 is not running"
        kill -KILL "$pid" && say "SIGKILLed dockerd of $2 (pid $pid)" ;;
    start-engine) answers "$2" || start_engine "$2"; say "dockerd of $2 answering" ;;
esac
