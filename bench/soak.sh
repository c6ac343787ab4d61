#!/usr/bin/env bash
# The churn soak: phones connecting, binding, dropping and reconnecting while pushes run.
#
#   bench/soak.sh [--phones N] [--duration-s S] [--rounds K] [--reconnects-per-s R]
#                 [--pushes-per-s P] [--broadcast-every-s B] [--fast-reconnect] [--no-build]
#                 [--out FILE.json]
#
# Starts pushgate (bench/pushgate.toml, loopback only, free ports) and runs
# `pushgate-bench churn` against it, K rounds (default 4): N phones (default 10,000) speak
# MPush's protocol (RSA handshake, AES session, bind), then for S seconds (default 80) R
# phones a second (default 100) drop their connection and reconnect as a new connection of
# the same user (a new device with a full handshake; --fast-reconnect: the same device
# resuming its session with FAST_CONNECT, as MPush's SDK reconnects), while P single pushes
# a second (default 200) go to random users and a broadcast reaches every phone each B
# seconds (default 10). At the end of a round every phone closes and the server's file
# descriptors and RSS are read again (after two of its housekeeping rounds); with
# --fast-reconnect the next round's phones come back with their sessions. It prints, per
# round, the phones, reconnects, pushes sent / statuses by kind / lost, the server's
# descriptors and RSS before, at the peak and after, and what its store holds, then PASS or
# FAIL: every push got exactly one status (also against the server's own counters), the
# descriptors came back to the baseline, and from the third round on RSS did not grow beyond
# what the store grew (the first two let the allocator settle). Exit status 0 on PASS. The server is stopped by its pid.
# Bounded: a round lasts S seconds plus the connects and at most a minute and a half of
# draining; N is at most 18,000 (each side holds one descriptor per phone; the limit is 20,000).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

phones=10000
duration=80
rounds=4
reconnects=100
pushes=200
broadcast=10
fast=0
build=1
out=""
while [ "$#" -gt 0 ]; do
    case "$1" in
    --phones) phones="${2:?--phones needs a number}"; shift ;;
    --duration-s) duration="${2:?--duration-s needs a number}"; shift ;;
    --rounds) rounds="${2:?--rounds needs a number}"; shift ;;
    --reconnects-per-s) reconnects="${2:?--reconnects-per-s needs a number}"; shift ;;
    --pushes-per-s) pushes="${2:?--pushes-per-s needs a number}"; shift ;;
    --broadcast-every-s) broadcast="${2:?--broadcast-every-s needs a number}"; shift ;;
    --fast-reconnect) fast=1 ;;
    --no-build) build=0 ;;
    --out) out="${2:?--out needs a file}"; shift ;;
    -h | --help) sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "soak.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
for pair in "phones:$phones" "duration-s:$duration" "rounds:$rounds" "reconnects-per-s:$reconnects" "pushes-per-s:$pushes" "broadcast-every-s:$broadcast"; do
    value="${pair#*:}"
    [[ "$value" =~ ^[0-9]+$ ]] || { echo "soak.sh: --${pair%%:*} takes a whole number" >&2; exit 2; }
done
[ "$phones" -ge 1 ] && [ "$phones" -le 18000 ] || { echo "soak.sh: --phones takes 1 to 18000" >&2; exit 2; }
[ "$duration" -ge 1 ] && [ "$duration" -le 3600 ] || { echo "soak.sh: --duration-s takes 1 to 3600" >&2; exit 2; }
[ "$rounds" -ge 1 ] && [ "$rounds" -le 10 ] || { echo "soak.sh: --rounds takes 1 to 10" >&2; exit 2; }

# One descriptor per phone on each side (the server and the generator are separate processes).
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt $((phones + 1000)) ]; then
    echo "soak.sh: only $(ulimit -n) open files allowed; $phones phones need $((phones + 1000))" >&2
    exit 1
fi

if [ "$build" -eq 1 ]; then
    cargo build --release -p pushgate -p pushgate-bench --bins
fi
bin="$root/target/release"
[ -x "$bin/pushgate" ] && [ -x "$bin/pushgate-bench" ] || { echo "soak.sh: build first (cargo build --release -p pushgate -p pushgate-bench --bins)" >&2; exit 1; }
revision="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
connect_port="$(free_port)"
gateway_port="$(free_port)"
admin_port="$(free_port)"

log="$(mktemp -t pushgate-soak.XXXXXX.log)"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

PUSHGATE_NET__CONNECT_PORT="$connect_port" PUSHGATE_NET__GATEWAY_PORT="$gateway_port" \
    PUSHGATE_NET__ADMIN_PORT="$admin_port" \
    "$bin/pushgate" serve --config "$here/pushgate.toml" >"$log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$admin_port/healthz" >/dev/null 2>&1; then
        break
    fi
    kill -0 "$server_pid" 2>/dev/null || { echo "soak.sh: pushgate exited:" >&2; cat "$log" >&2; exit 1; }
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$admin_port/healthz" >/dev/null || { echo "soak.sh: pushgate did not start:" >&2; cat "$log" >&2; exit 1; }

echo "churn soak: pushgate $revision, $(date -u +%Y-%m-%d), $phones phones, $rounds round(s) of $duration s, $reconnects reconnects/s, $pushes pushes/s, a broadcast every $broadcast s (loopback)"
args=(churn --connect "127.0.0.1:$connect_port" --gateway "127.0.0.1:$gateway_port"
    --admin "127.0.0.1:$admin_port" --server-pid "$server_pid" --phones "$phones"
    --duration-s "$duration" --rounds "$rounds" --reconnects-per-s "$reconnects" --pushes-per-s "$pushes"
    --broadcast-every-s "$broadcast")
[ -z "$out" ] || args+=(--out "$out")
[ "$fast" -eq 0 ] || args+=(--fast-reconnect)
status=0
# The generator gets its own core when there are two.
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    taskset -c 1 "$bin/pushgate-bench" "${args[@]}" || status=$?
else
    "$bin/pushgate-bench" "${args[@]}" || status=$?
fi
warnings="$(grep -c ' WARN ' "$log" || true)"
echo "server log: $warnings warning line(s) ($log)"
exit "$status"
