#!/usr/bin/env bash
# Make a Docker engine answer on this machine (dev box or a fresh CI clone).
# Idempotent: exits at once when `docker info` already works.
#
# Env:
#   POSTGRAAS_DOCKERD_LOG      dockerd log file (default /var/log/dockerd.log)
#   POSTGRAAS_DOCKERD_TIMEOUT  seconds to wait for the engine (default 90)
set -euo pipefail

log_file=${POSTGRAAS_DOCKERD_LOG:-/var/log/dockerd.log}
timeout=${POSTGRAAS_DOCKERD_TIMEOUT:-90}

say() { printf 'ensure-docker: %s\n' "$*" >&2; }

# Bounded: a wedged daemon must not hang the caller forever.
engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

if command -v docker >/dev/null 2>&1 && engine_answers; then
    say "engine already answering"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    say "engine not answering and not root: cannot install or start dockerd"
    exit 1
fi

# The machines ship only the docker client; the engine comes from Debian.
# iptables is needed by dockerd's bridge networking (published ports).
if ! command -v dockerd >/dev/null 2>&1; then
    say "installing docker.io and iptables with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends docker.io iptables >/dev/null
fi

start_dockerd() {
    mkdir -p "$(dirname "$log_file")"
    say "starting dockerd (log: $log_file)"
    # Marks where this start begins in a log that keeps growing across runs.
    printf '\n==== ensure-docker: starting dockerd at %s ====\n' "$(date -u +%FT%TZ)" >>"$log_file"
    # There is no init system to supervise it: setsid + nohup put dockerd in
    # its own session so it outlives this script and the caller's shell/CI
    # step; stdin from /dev/null so it holds no terminal.
    setsid nohup dockerd >>"$log_file" 2>&1 </dev/null &
    started_pid=$!
}

started_pid=""
# Do not start a second daemon if one is already running (coming up, e.g.
# started by a concurrent run of this script, or shutting down); wait for it.
if pgrep -x dockerd >/dev/null 2>&1; then
    say "dockerd already running (pid $(pgrep -x dockerd | head -n1)); waiting for it"
else
    start_dockerd
fi

deadline=$((SECONDS + timeout))
until engine_answers; do
    # One we did not start went away (it was shutting down): start our own.
    if [ -z "$started_pid" ] && ! pgrep -x dockerd >/dev/null 2>&1; then
        start_dockerd
    fi
    # Fail fast if the daemon we started died (bad config, stale pid file...).
    # pgrep as well: setsid may fork, leaving $! pointing at a finished parent.
    if [ -n "$started_pid" ] && ! kill -0 "$started_pid" 2>/dev/null &&
        ! pgrep -x dockerd >/dev/null 2>&1; then
        say "dockerd exited during startup; tail of $log_file:"
        tail -n 30 "$log_file" >&2 2>/dev/null || true
        exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        say "docker engine did not answer within ${timeout}s; tail of $log_file:"
        tail -n 30 "$log_file" >&2 2>/dev/null || true
        exit 1
    fi
    sleep 0.5
done
say "engine answering after ${SECONDS}s"
