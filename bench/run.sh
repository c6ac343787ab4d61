#!/usr/bin/env bash
# The side-by-side benchmark: pushgate vs mosquitto vs nats-server, one command.
#
#   bench/run.sh [--quick] [--targets pushgate,mosquitto,nats] [--workloads idle,storm,single,fanout,interference]
#                [--redis [--nodes N]] [--name NAME] [--no-build] [-- EXTRA pushgate-bench run FLAGS]
#
# For each target it starts the server pinned to CPU 0 (pushgate with bench/pushgate.toml, the
# peers through bench/peers.sh), runs `pushgate-bench run` pinned to CPU 1 against it, and stops
# the server by pid. Then `pushgate-bench report` prints the side-by-side table with the ratios
# pushgate / peer and the issue's targets as pass/fail lines, and writes
#   bench/results/NAME.json   every point of every target (NAME: a UTC timestamp by default)
#   bench/results/NAME.txt    the table
#   bench/results/NAME.png    p99 latency vs achieved throughput
# --quick runs short points with fewer connections (a minute or so) to check the set-up.
# --redis adds the cluster point `pushgate+redis`: a redis-server on a free loopback port and
# N pushgate nodes (--nodes, default 3) on it, phone n on node n % N, pushes through the
# cluster PushClient (routes from Redis, cached); Redis counts its commands per point.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

quick=0
build=1
targets="pushgate,mosquitto,nats"
workloads="idle,storm,single,fanout,interference"
name="$(date -u +%Y%m%dT%H%M%SZ)"
redis=0
nodes=3
extra=()
while [ "$#" -gt 0 ]; do
    case "$1" in
    --quick) quick=1 ;;
    --no-build) build=0 ;;
    --targets) targets="${2:?--targets needs a list}"; shift ;;
    --workloads) workloads="${2:?--workloads needs a list}"; shift ;;
    --name) name="${2:?--name needs a value}"; shift ;;
    --redis) redis=1 ;;
    --nodes) nodes="${2:?--nodes needs a number}"; shift ;;
    --) shift; extra=("$@"); break ;;
    -h | --help) sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ "$redis" -eq 1 ] && [[ ",$targets," != *,pushgate+redis,* ]]; then
    targets="$targets,pushgate+redis"
fi
[[ "$nodes" =~ ^[1-9]$ ]] || { echo "run.sh: --nodes takes 1 to 9" >&2; exit 2; }
for t in ${targets//,/ }; do
    case "$t" in pushgate | pushgate+redis | mosquitto | nats) ;; *) echo "run.sh: unknown target '$t'" >&2; exit 2 ;; esac
done
if [[ ",$targets," == *,pushgate+redis,* ]] && ! command -v redis-server >/dev/null; then
    echo "run.sh: the pushgate+redis point needs redis-server: apt-get install -y redis-server redis-tools" >&2
    exit 1
fi
[[ "$name" =~ ^[A-Za-z0-9._-]+$ ]] || { echo "run.sh: --name may hold letters, digits, . _ - only" >&2; exit 2; }

# 19,000 idle connections on each side need the descriptors.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt 19500 ]; then
    echo "run.sh: warning: only $(ulimit -n) open files allowed; the idle workload may fail" >&2
fi

# The server on one core, the load generator on another, when there are two.
if [ "$(nproc)" -ge 2 ]; then
    server_cpu=0
    load_cpu=1
else
    server_cpu=0
    load_cpu=0
    echo "run.sh: warning: one CPU only: server and load generator share it" >&2
fi

if [ "$build" -eq 1 ]; then
    cargo build --release -p pushgate -p pushgate-bench --bins
fi
# What was built, for the report.
revision="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
changed="$(git status --porcelain -- core runtime Cargo.toml Cargo.lock 2>/dev/null | wc -l)"
provenance="pushgate built from git $revision"
[ "$changed" -eq 0 ] || provenance="$provenance plus $changed uncommitted file(s) in core/, runtime/ or Cargo files"
[ "$build" -eq 1 ] || provenance="$provenance (--no-build: the binaries found in target/release)"

bin="$root/target/release"
[ -x "$bin/pushgate" ] && [ -x "$bin/pushgate-bench" ] || { echo "run.sh: build first (cargo build --release -p pushgate -p pushgate-bench --bins)" >&2; exit 1; }

# The plot's text needs a TrueType font (drawn by pure-Rust code, no fontconfig).
font=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
if [ ! -f "$font" ]; then
    echo "run.sh: installing fonts-dejavu-core for the plot" >&2
    apt_get() { if [ "$(id -u)" -eq 0 ]; then env DEBIAN_FRONTEND=noninteractive apt-get "$@"; else sudo env DEBIAN_FRONTEND=noninteractive apt-get "$@"; fi; }
    apt_get install -y --no-install-recommends fonts-dejavu-core >/dev/null 2>&1 \
        || { apt_get update >/dev/null 2>&1 && apt_get install -y --no-install-recommends fonts-dejavu-core >/dev/null 2>&1; } \
        || echo "run.sh: warning: could not install fonts-dejavu-core: no plot" >&2
fi
if [[ ",$targets," == *,mosquitto,* || ",$targets," == *,nats,* ]]; then
    "$here/peers.sh" install
fi

if [ "$quick" -eq 1 ]; then
    sizes=(--idle-connections 2000 --connect-concurrency 100 --storm-phones 2000 --storm-in-flight 500 --users 1000 --windows 1000,64 --rates-per-s 20000,50000
        --interference-rate-per-s 2000 --fanout-sizes 1000,2000 --fanout-windows 1,8 --warmup-ms 200 --measure-ms 1000 --drain-ms 3000)
else
    sizes=(--idle-connections 19000 --connect-concurrency 100 --storm-phones 10000 --storm-in-flight 1000 --users 1000 --windows 1000,64 --rates-per-s 5000,10000,20000,50000,100000
        --interference-rate-per-s 5000 --fanout-sizes 1000,10000 --fanout-windows 1,8 --warmup-ms 500 --measure-ms 3000 --drain-ms 5000)
fi

load="$(cut -d' ' -f1 /proc/loadavg)"
if awk -v l="$load" 'BEGIN { exit !(l > 0.5) }'; then
    echo "run.sh: warning: the machine is busy (load average $load): figures will be disturbed; the report flags the points" >&2
fi

results="$here/results"
parts="$results/$name.parts"
mkdir -p "$parts"
server_pid=""
started_peer=""
node_pids=()
redis_pid=""

stop_cluster() {
    local pid
    for pid in "${node_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    node_pids=()
    if [ -n "$redis_pid" ]; then
        kill "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
        redis_pid=""
    fi
}

cleanup() {
    stop_cluster
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [ -n "$started_peer" ]; then
        "$here/peers.sh" stop "$started_peer" "$parts" || true
    fi
}
trap cleanup EXIT

port_accepts() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# A loopback port nothing listens on or is bound to, from a range the kernel does not hand out
# on its own (a random start, so concurrent runs rarely collide).
next_port=$((20000 + RANDOM % 8000))
port_in_use() {
    port_accepts "$1" || [ -n "$(ss -Htan "sport = :$1" 2>/dev/null)" ]
}
# Sets $port (not a $(...) subshell: next_port must advance in this shell).
free_port() {
    while port_in_use "$next_port"; do
        next_port=$((next_port + 1))
    done
    port="$next_port"
    next_port=$((next_port + 1))
}

wait_ports() {
    local deadline=$((SECONDS + 20)) port
    for port in "$@"; do
        until port_accepts "$port"; do
            if ! kill -0 "$server_pid" 2>/dev/null; then
                echo "run.sh: pushgate exited during start-up:" >&2
                tail -n 20 "$parts/pushgate.log" >&2
                return 1
            fi
            [ "$SECONDS" -lt "$deadline" ] || { echo "run.sh: pushgate did not open port $port" >&2; return 1; }
            sleep 0.05
        done
    done
}

generator() {
    taskset -c "$load_cpu" "$bin/pushgate-bench" run --workloads "$workloads" "${sizes[@]}" "$@" "${extra[@]}"
}

started_at=$SECONDS
for target in ${targets//,/ }; do
    echo "=== $target ===" >&2
    case "$target" in
    pushgate)
        for attempt in 1 2 3; do
            free_port
            connect_port="$port"
            free_port
            gateway_port="$port"
            free_port
            admin_port="$port"
            PUSHGATE_NET__CONNECT_PORT="$connect_port" PUSHGATE_NET__GATEWAY_PORT="$gateway_port" \
                PUSHGATE_NET__ADMIN_PORT="$admin_port" \
                taskset -c "$server_cpu" "$bin/pushgate" serve --config "$here/pushgate.toml" \
                </dev/null >"$parts/pushgate.log" 2>&1 &
            server_pid=$!
            if wait_ports "$connect_port" "$gateway_port" "$admin_port"; then
                break
            fi
            kill "$server_pid" 2>/dev/null || true
            wait "$server_pid" 2>/dev/null || true
            server_pid=""
            [ "$attempt" -lt 3 ] || { echo "run.sh: pushgate would not start" >&2; exit 1; }
        done
        generator --target pushgate --connect "127.0.0.1:$connect_port" \
            --gateway "127.0.0.1:$gateway_port" --server-pid "$server_pid" --out "$parts/pushgate.json"
        kill "$server_pid"
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
        ;;
    pushgate+redis)
        # Redis and the nodes share the server core; the generator keeps its own.
        free_port
        redis_port="$port"
        taskset -c "$server_cpu" redis-server --port "$redis_port" --bind 127.0.0.1 --save '' \
            --appendonly no </dev/null >"$parts/redis.log" 2>&1 &
        redis_pid=$!
        server_pid="$redis_pid"
        wait_ports "$redis_port" || exit 1
        redis_url="redis://127.0.0.1:$redis_port"
        connects=()
        gateways=()
        for i in $(seq 1 "$nodes"); do
            free_port
            connect_port="$port"
            free_port
            gateway_port="$port"
            free_port
            admin_port="$port"
            PUSHGATE_NET__CONNECT_PORT="$connect_port" PUSHGATE_NET__GATEWAY_PORT="$gateway_port" \
                PUSHGATE_NET__ADMIN_PORT="$admin_port" \
                taskset -c "$server_cpu" "$bin/pushgate" serve --config "$here/pushgate.toml" \
                --redis "$redis_url" </dev/null >"$parts/pushgate-redis-$i.log" 2>&1 &
            server_pid=$!
            node_pids+=("$server_pid")
            wait_ports "$connect_port" "$gateway_port" "$admin_port" || exit 1
            connects+=("127.0.0.1:$connect_port")
            gateways+=("127.0.0.1:$gateway_port")
        done
        more=("${connects[@]:1}")
        more_flag=()
        [ "${#more[@]}" -eq 0 ] || more_flag=(--connect-more "$(IFS=,; echo "${more[*]}")")
        # Server CPU and RSS are node 1's (with one node, the whole server side but Redis).
        generator --target pushgate --label pushgate+redis --connect "${connects[0]}" "${more_flag[@]}" \
            --gateway "${gateways[0]}" --cluster-redis "$redis_url" --redis-stats "127.0.0.1:$redis_port" \
            --server-pid "${node_pids[0]}" --out "$parts/pushgate+redis.json"
        server_pid=""
        stop_cluster
        ;;
    mosquitto | nats)
        free_port
        "$here/peers.sh" start "$target" "$port" "$server_cpu" "$parts"
        started_peer="$target"
        generator --target "$target" --connect "127.0.0.1:$port" \
            --server-pid "$(cat "$parts/$target.pid")" --out "$parts/$target.json"
        "$here/peers.sh" stop "$target" "$parts"
        started_peer=""
        ;;
    esac
done

inputs=()
for target in ${targets//,/ }; do
    inputs+=("$parts/$target.json")
done
mode="full"
[ "$quick" -eq 1 ] && mode="quick"
cluster_note=()
if [[ ",$targets," == *,pushgate+redis,* ]]; then
    cluster_note=(--note "pushgate+redis: $(redis-server --version | awk '{print $3}'), --save '' --appendonly no; $nodes pushgate node(s) on it, all pinned with Redis to CPU $server_cpu; phone n on node n % $nodes; pushes through the cluster PushClient (HGETALL mp:ur:{user}, routes cached); redis/op = commands Redis counted (INFO commandstats) per connect+bind (idle) or per push sent (single); server CPU/RSS columns are node 1's only")
fi
"$bin/pushgate-bench" report "${inputs[@]}" \
    --out "$results/$name.json" --table "$results/$name.txt" --png "$results/$name.png" --font "$font" \
    --note "$provenance; mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}'), nats-server $(nats-server --version 2>/dev/null | awk '{print $2}')" \
    --note "run: bench/run.sh ($mode), $(nproc) CPUs; servers pinned to CPU $server_cpu, load generator to CPU $load_cpu (its measured path — sender, statuses, single-push phones — one thread, in SCHED_FIFO while its fan-out receivers run on another in SCHED_IDLE); 64-byte payloads" \
    --note "pushgate: bench/pushgate.toml - flow control off (limits 0 = unlimited) so the server is measured, not the limiter; per-push INFO log lines off (log.filter = warn)" \
    --note "peers: mosquitto and nats-server from Debian, bench/mosquitto.conf and bench/nats.conf; MQTT and NATS messages are QoS 0 / core publishes (no status), compared with pushgate ack none" \
    --note "storm: N phones connect once each (pushgate: RSA handshake + bind; peers: CONNECT + SUBSCRIBE), the given number under way at once; time to bind from the start of each connect; listen overflows / drops / SYN retransmissions are the kernel's TcpExt counters (nstat's names) over the point, for the whole machine" \
    --note "single: 1 sender -> 1,000 users in turn; closed loop = fixed number in flight (sent, not yet received by the phone and, for pushgate, its status not back); open loop latency from the intended send time" \
    --note "fan-out: pushgate broadcast to every bound phone vs one publish to a topic all N subscribers hold; a broadcast is in flight until the last phone has it" \
    --note "interference: single pushes (open loop, ack none) to the 1,000 users while broadcasts to the largest fan-out size run back to back (the next one sent when the last phone had the previous one and, for pushgate, its status came back); srv CPU us/op: the server's CPU time per delivery, connection or bind over the point" \
    --note "pg/peer ratios: higher is better for rates, lower is better for latencies and RSS" \
    "${cluster_note[@]}"
echo "run.sh: done in $((SECONDS - started_at)) s (after the build); results in bench/results/$name.{json,txt,png}" >&2
