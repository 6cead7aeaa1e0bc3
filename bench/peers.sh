#!/usr/bin/env bash
# shellcheck disable=SC2034 # workload and durability settings are read as ${!name}
# bench/peers.sh: LogLog side by side with etcd and NATS JetStream, on this
# machine, in one run. See bench/README.md for what it measures and how to
# read it.
#
#   bench/peers.sh [--runs N] [--duration SECS] [--quick] [--out FILE]
#                  [--dir DIR] [--base-port PORT] [--no-install]
#
# Every system runs fresh for every measurement (new data directories), all
# on the same filesystem (--dir), with the load generator on the same
# machine. Runs interleave the systems so drift of the shared disk hits all
# of them alike. Medians of --runs runs are printed, one line per (system,
# topology, workload); all raw figures go to --out as JSON.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

RUNS=3
DURATION=15
OUT=$REPO/bench/results/peers-$(date -u +%Y%m%d-%H%M%S).json
BASE_DIR=${TMPDIR:-/tmp}
BASE_PORT=25000
INSTALL=1

usage() {
    sed -n '3,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

while (($#)); do
    case $1 in
    --runs) RUNS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --quick) RUNS=1; DURATION=3; shift ;;
    --out) OUT=$2; shift 2 ;;
    --dir) BASE_DIR=$2; shift 2 ;;
    --base-port) BASE_PORT=$2; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    -h | --help) usage 0 ;;
    *) echo "peers.sh: unknown argument $1" >&2; usage 2 ;;
    esac
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "peers.sh: --runs must be a positive integer" >&2; exit 2; }
[[ $DURATION =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "peers.sh: --duration must be seconds" >&2; exit 2; }
[[ $BASE_PORT =~ ^[0-9]+$ ]] && ((BASE_PORT > 0 && BASE_PORT < 65000)) ||
    { echo "peers.sh: --base-port must be below 65000" >&2; exit 2; }

# Workloads: name, entry size, concurrent writers (read as ${!name}).
W1_SIZE=128
W1_WRITERS=64
W2_SIZE=65536
W2_WRITERS=8

# How each system acknowledges a write (printed next to its figures).
DURABILITY_loglog="fsync always: fdatasync (group commit) on a majority before the ack"
DURABILITY_etcd="WAL fdatasync per Raft batch on every member, ack after quorum commit+apply"
DURABILITY_nats="NO fsync before the ack (2.9 syncs lazily: store every 2 min, R3 Raft log every 5; no option to change it)"
DURABILITY_fio="fdatasync after every 1 MiB write to a new file (W2 1-node's disk reference)"
DURABILITY_fio_3="3 jobs, one per node, each: fdatasync after every 1 MiB write to a new file; MB/s per job (W2 3-node's disk reference)"
DURABILITY_loglog_R1="a read: whole log from the leader, offset 0, right after W2 (page cache warm)"
DURABILITY_fio_ow="fdatasync after every 1 MiB write over written blocks (W2 1-node's disk reference)"

log() { printf '[peers %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ------------------------------------------------------------ cleanup

WORK=""
PIDS=()

stop_pids() {
    local pid alive=()
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null && alive+=("$pid")
    done
    local waited=0
    while ((${#alive[@]})) && ((waited < 100)); do
        local still=()
        for pid in "${alive[@]}"; do
            kill -0 "$pid" 2>/dev/null && still+=("$pid")
        done
        alive=("${still[@]}")
        ((${#alive[@]})) || break
        sleep 0.1
        waited=$((waited + 1))
    done
    for pid in "${alive[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_pids
    [[ -n $WORK && -d $WORK ]] && rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
# Errors of the tools are reported in a few lines, without backtraces.
export RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0
trap 'log "interrupted"; exit 130' INT TERM

# Starts a background process whose output goes to LOGFILE; remembered for cleanup.
spawn() {
    local logfile=$1
    shift
    "$@" >"$logfile" 2>&1 &
    PIDS+=("$!")
}

# Runs a command in the background and waits for it, so a signal to this
# script interrupts the wait and the trap stops it. Its stdout goes to OUTFILE.
run_tracked() {
    local outfile=$1 errfile=$2
    shift 2
    "$@" >"$outfile" 2>"$errfile" &
    local pid=$!
    PIDS+=("$pid")
    local status=0
    wait "$pid" || status=$?
    local kept=()
    local p
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || kept+=("$p"); done
    PIDS=("${kept[@]}")
    return "$status"
}

# ------------------------------------------------------------ install and build

install_missing() {
    local packages=()
    command -v etcd >/dev/null || packages+=(etcd-server)
    command -v etcdctl >/dev/null || packages+=(etcd-client)
    command -v nats-server >/dev/null || packages+=(nats-server)
    command -v protoc >/dev/null || packages+=(protobuf-compiler)
    command -v fio >/dev/null || packages+=(fio)
    command -v jq >/dev/null || packages+=(jq)
    ((${#packages[@]})) || return 0
    ((INSTALL)) || die "missing ${packages[*]} (and --no-install given)"
    local sudo=()
    ((EUID == 0)) || sudo=(sudo)
    log "installing ${packages[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
}

build() {
    log "building loglogd, loglog and bench/peer-load (release)"
    (cd "$REPO" && cargo build --release --quiet -p loglogd -p loglog-cli)
    (cd "$REPO" && cargo build --release --quiet --manifest-path bench/peer-load/Cargo.toml)
    local target=${CARGO_TARGET_DIR:-$REPO/target}
    LOGLOGD=$target/release/loglogd
    LOGLOG=$target/release/loglog
    # peer-load is its own workspace: without CARGO_TARGET_DIR it builds
    # into bench/peer-load/target.
    PEER_LOAD=${CARGO_TARGET_DIR:-$REPO/bench/peer-load/target}/release/peer-load
    for binary in "$LOGLOGD" "$LOGLOG" "$PEER_LOAD"; do
        [[ -x $binary ]] || die "build did not produce $binary"
    done
}

# ------------------------------------------------------------ systems

# Ports: LogLog BASE+0.., etcd BASE+100.., NATS BASE+200..; clients +1..+3,
# peers +11..+13.
port() { echo $((BASE_PORT + $1)); }

wait_port() {
    local port=$1 what=$2 tries=0
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        tries=$((tries + 1))
        ((tries < 300)) || die "$what did not listen on port $port within 30 s (logs in $WORK)"
        sleep 0.1
    done
}

# start_SYSTEM NODES DIR: starts a fresh cluster and sets TARGET (what the
# load generator is pointed at).
start_loglog() {
    local nodes=$1 dir=$2 i
    if ((nodes == 1)); then
        spawn "$dir/n1.log" "$LOGLOGD" --data-dir "$dir/n1" --listen "127.0.0.1:$(port 1)"
        wait_port "$(port 1)" loglogd
        TARGET=127.0.0.1:$(port 1)
        return
    fi
    local peers="" clients=""
    for i in $(seq 1 "$nodes"); do
        peers+="${peers:+,}$i=127.0.0.1:$(port $((10 + i)))@127.0.0.1:$(port "$i")"
        clients+="${clients:+,}127.0.0.1:$(port "$i")"
    done
    for i in $(seq 1 "$nodes"); do
        spawn "$dir/n$i.log" "$LOGLOGD" --id "$i" --data-dir "$dir/n$i" \
            --listen "127.0.0.1:$(port "$i")" --peer-listen "127.0.0.1:$(port $((10 + i)))" \
            --peers "$peers"
    done
    # Wait for a leader and put it first, so no append is redirected.
    local tries=0 leader=""
    while [[ -z $leader ]]; do
        leader=$("$LOGLOG" --cluster "$clients" status --json 2>/dev/null |
            jq -r '[.[] | select(.role == "leader") | .address][0] // empty' 2>/dev/null || true)
        [[ -n $leader ]] && break
        tries=$((tries + 1))
        ((tries < 300)) || die "LogLog cluster elected no leader within 30 s (logs in $dir)"
        sleep 0.1
    done
    TARGET=$leader,$clients
}

start_etcd() {
    local nodes=$1 dir=$2 i initial="" endpoints=""
    for i in $(seq 1 "$nodes"); do
        initial+="${initial:+,}n$i=http://127.0.0.1:$(port $((110 + i)))"
        endpoints+="${endpoints:+,}http://127.0.0.1:$(port $((100 + i)))"
    done
    for i in $(seq 1 "$nodes"); do
        spawn "$dir/n$i.log" etcd --name "n$i" --data-dir "$dir/n$i" \
            --listen-client-urls "http://127.0.0.1:$(port $((100 + i)))" \
            --advertise-client-urls "http://127.0.0.1:$(port $((100 + i)))" \
            --listen-peer-urls "http://127.0.0.1:$(port $((110 + i)))" \
            --initial-advertise-peer-urls "http://127.0.0.1:$(port $((110 + i)))" \
            --initial-cluster "$initial" --initial-cluster-state new \
            --initial-cluster-token "peers-bench-$(basename "$dir")" \
            --quota-backend-bytes $((8 * 1024 * 1024 * 1024)) \
            --logger zap --log-level warn
    done
    for i in $(seq 1 "$nodes"); do wait_port "$(port $((100 + i)))" etcd; done
    TARGET=$endpoints # peer-load finds the leader
}

start_nats() {
    local nodes=$1 dir=$2 i routes="" servers=""
    # JetStream refuses a file store limit above the free space.
    local free_bytes
    free_bytes=$(df -B1 --output=avail "$dir" | tail -1 | tr -d ' ')
    local store_limit=$((free_bytes / 10 * 9))
    for i in $(seq 1 "$nodes"); do
        routes+="${routes:+, }nats-route://127.0.0.1:$(port $((210 + i)))"
        servers+="${servers:+,}nats://127.0.0.1:$(port $((200 + i)))"
    done
    for i in $(seq 1 "$nodes"); do
        local conf=$dir/n$i.conf
        {
            echo "server_name: n$i"
            echo "listen: 127.0.0.1:$(port $((200 + i)))"
            echo "jetstream { store_dir: \"$dir/n$i\", max_file_store: $store_limit, max_memory_store: 268435456 }"
            if ((nodes > 1)); then
                echo "cluster { name: peers-bench, listen: 127.0.0.1:$(port $((210 + i))), routes: [ $routes ] }"
            fi
        } >"$conf"
        spawn "$dir/n$i.log" nats-server -c "$conf"
    done
    for i in $(seq 1 "$nodes"); do wait_port "$(port $((200 + i)))" nats-server; done
    TARGET=$servers # peer-load creates the stream and finds its leader
}

# ------------------------------------------------------------ measuring

RAW="" # JSON lines, one per measurement

# record SYSTEM TOPOLOGY WORKLOAD RUN NORMALIZED_JSON RAW_JSON
record() {
    local durability_var=DURABILITY_${1//-/_}
    [[ $3 == R1 ]] && durability_var=DURABILITY_${1}_R1
    jq -nc --arg system "$1" --arg topology "$2" --arg workload "$3" --argjson run "$4" \
        --arg durability "${!durability_var}" --argjson figures "$5" --argjson raw "$6" \
        '{system: $system, topology: $topology, workload: $workload, run: $run,
          durability: $durability} + $figures + {raw: $raw}' >>"$RAW"
    jq -r '"  \(.system) \(.topology) \(.workload) run \(.run): \(.ops_per_s | floor) ops/s, \(.mb_per_s * 10 | round / 10) MB/s, p99 \(.p99_us // "-") us"' \
        <<<"$(tail -1 "$RAW")" >&2
}

# measure SYSTEM NODES WORKLOAD RUN
measure() {
    local system=$1 nodes=$2 workload=$3 run=$4
    local size_var=${workload}_SIZE writers_var=${workload}_WRITERS
    local size=${!size_var} writers=${!writers_var}
    local topology="${nodes}-node"
    local dir=$WORK/$system-$nodes-$workload-$run
    mkdir -p "$dir"
    "start_$system" "$nodes" "$dir"
    local out=$dir/result.json err=$dir/load.err
    local limit=$((${DURATION%.*} + 180))
    case $system in
    loglog)
        run_tracked "$out" "$err" timeout "$limit" "$LOGLOG" --cluster "$TARGET" bench \
            --writers "$writers" --size "$size" --duration "${DURATION}s" --json ||
            die "loglog bench failed: $(tail -3 "$err")"
        ;;
    etcd)
        run_tracked "$out" "$err" timeout "$limit" "$PEER_LOAD" etcd --endpoints "$TARGET" \
            --writers "$writers" --size "$size" --duration "$DURATION" ||
            die "peer-load etcd failed: $(tail -3 "$err"; tail -5 "$dir"/n1.log)"
        ;;
    nats)
        run_tracked "$out" "$err" timeout "$limit" "$PEER_LOAD" nats --servers "$TARGET" \
            --replicas "$nodes" --writers "$writers" --size "$size" --duration "$DURATION" ||
            die "peer-load nats failed: $(tail -3 "$err"; tail -5 "$dir"/n1.log)"
        ;;
    esac
    local raw
    raw=$(tail -1 "$out")
    record "$system" "$topology" "$workload" "$run" "$(jq -c '{
        ops_per_s: (.ops_per_s // .appends_per_s), mb_per_s: .mb_per_s,
        p50_us: .latency_us.p50, p99_us: .latency_us.p99}' <<<"$raw")" "$raw"
    if [[ $system == loglog && $workload == W2 && $HAVE_READ_ALL == 1 ]]; then
        # R1: read back the whole log W2 just wrote, from offset 0.
        run_tracked "$dir/read.json" "$dir/read.err" timeout "$limit" "$LOGLOG" --cluster "$TARGET" \
            bench --read-all --json || die "loglog bench --read-all failed: $(tail -3 "$dir/read.err")"
        raw=$(tail -1 "$dir/read.json")
        record loglog "$topology" R1 "$run" "$(jq -c '{
            ops_per_s: (.entries_per_s // .reads_per_s // .ops_per_s // 0), mb_per_s: .mb_per_s,
            p50_us: (.latency_us.p50 // null), p99_us: (.latency_us.p99 // null)}' <<<"$raw")" "$raw"
    fi
    stop_pids
    rm -rf "$dir"
}

# fio: sequential 1 MiB writes, fdatasync after each, same filesystem.
# measure_fio RUN fio|fio-ow [NODES]: `fio` writes a new (fallocated) file,
# so each fdatasync also commits extent metadata, like a log that grows its
# file; `fio-ow` overwrites a file fio wrote in full first, so each
# fdatasync flushes data only, like LogLog's segments where they are zeroed
# ahead of the writer (1 GiB, rewritten from its start when the run
# outlasts it). With NODES=3, `fio` runs three such jobs at once, one per
# node of a 3-node cluster sharing this disk, and reports MB/s per job:
# what the disk gives each copy when three nodes fsync side by side.
measure_fio() {
    local run=$1 mode=$2 nodes=${3:-1}
    local dir=$WORK/$mode-$run-$nodes
    mkdir -p "$dir"
    local layout=(--size=4G)
    [[ $mode == fio-ow ]] && layout=(--size=1G --overwrite=1)
    ((nodes > 1)) && layout=(--size=3G --numjobs="$nodes" --group_reporting)
    run_tracked "$dir/fio.json" "$dir/fio.err" fio --name="$mode" \
        --directory="$dir" --rw=write --bs=1M "${layout[@]}" --fdatasync=1 --ioengine=psync \
        --runtime="$DURATION" --time_based --output-format=json ||
        die "fio failed: $(tail -3 "$dir/fio.err")"
    local raw system=$mode
    ((nodes > 1)) && system=$mode-$nodes
    raw=$(jq -c --argjson jobs "$nodes" '.jobs[0] | {jobname, jobs: $jobs, write: {bw_bytes: .write.bw_bytes,
        iops: .write.iops, runtime_ms: .write.runtime, clat_ns: .write.clat_ns.percentile},
        sync: {lat_ns: .sync.lat_ns.percentile}}' "$dir/fio.json")
    record "$system" "$nodes-node" W2 "$run" "$(jq -c '{ops_per_s: (.write.iops / .jobs),
        mb_per_s: (.write.bw_bytes / .jobs / 1e6), p50_us: null, p99_us: null,
        fdatasync_p50_us: ((.sync.lat_ns["50.000000"] // 0) / 1000 | floor),
        fdatasync_p99_us: ((.sync.lat_ns["99.000000"] // 0) / 1000 | floor)}' <<<"$raw")" "$raw"
    rm -rf "$dir"
}

# F1 (LogLog only): W1 on 3 nodes, the leader SIGKILLed a third of the way
# in. The bench's longest_ack_gap_us, the longest time without any
# acknowledged append, is the failover time: from the last ack before the
# kill to the first one after it (so it includes up to one ack interval
# before the kill, well under a millisecond at W1's rate).
measure_failover() {
    local run=$1
    local dir=$WORK/loglog-3-F1-$run
    mkdir -p "$dir"
    start_loglog 3 "$dir"
    # start_loglog spawned node i as PIDS[i-1], serving clients on port i.
    local leader=${TARGET%%,*}
    local leader_pid=${PIDS[$((${leader##*:} - BASE_PORT - 1))]}
    local out=$dir/result.json err=$dir/load.err
    timeout $((${DURATION%.*} + 180)) "$LOGLOG" --cluster "$TARGET" bench \
        --writers "$W1_WRITERS" --size "$W1_SIZE" --duration "${DURATION}s" --json >"$out" 2>"$err" &
    local bench=$!
    PIDS+=("$bench")
    sleep "$(awk -v seconds="$DURATION" 'BEGIN { print seconds / 3 }')"
    kill -KILL "$leader_pid"
    # Reaped here, quietly (bash reports a job killed by a signal otherwise).
    wait "$leader_pid" 2>/dev/null || true
    wait "$bench" || die "loglog bench (failover) failed: $(tail -3 "$err")"
    local raw
    raw=$(tail -1 "$out")
    record loglog 3-node F1 "$run" "$(jq -c '{
        ops_per_s: .appends_per_s, mb_per_s: .mb_per_s, p50_us: .latency_us.p50,
        p99_us: .latency_us.p99, failover_ms: (.longest_ack_gap_us / 1000)}' <<<"$raw")" "$raw"
    stop_pids
    rm -rf "$dir"
}

# ------------------------------------------------------------ report

report() {
    local medians
    medians=$(jq -s '
        def median: sort | if length == 0 then null
            elif length % 2 == 1 then .[length / 2 | floor]
            else (.[length / 2 - 1] + .[length / 2]) / 2 end;
        (group_by([.system, .topology, .workload]) | map({
            system: .[0].system, topology: .[0].topology, workload: .[0].workload,
            durability: .[0].durability, runs: length,
            ops_per_s: (map(.ops_per_s) | median), mb_per_s: (map(.mb_per_s) | median),
            p50_us: (map(.p50_us | select(. != null)) | median),
            p99_us: (map(.p99_us | select(. != null)) | median),
            failover_ms: (map(.failover_ms | select(. != null)) | median)})) as $rows
        | [$rows[] | . as $row
            | ([$rows[] | select(.system == "loglog" and .topology == $row.topology
                 and .workload == $row.workload)][0]) as $ours
            | $row + {loglog_ratio: (if $row.system == "loglog" or $ours == null
                 or $row.mb_per_s == 0 then null else $ours.mb_per_s / $row.mb_per_s end)}]
        | sort_by({W1: 0, W2: 1, R1: 2, F1: 3}[.workload], .topology, ({loglog: 0, etcd: 1, nats: 2, fio: 3, "fio-ow": 4, "fio-3": 5}[.system]))' "$RAW")

    jq -n --slurpfile runs "$RAW" --argjson medians "$medians" \
        --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg host "$(uname -srm)" \
        --arg cpus "$(nproc)" --arg cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')" \
        --arg etcd "$(etcd --version 2>/dev/null | head -1)" --arg nats "$(nats-server --version 2>/dev/null)" \
        --arg fio "$(fio --version)" --arg loglog "$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        --argjson duration "$DURATION" --argjson runs_per "$RUNS" \
        '{date: $date, machine: {kernel: $host, cpus: $cpus, cpu: $cpu,
            note: "load generators run on the same machine as every node"},
          versions: {etcd: $etcd, nats: $nats, fio: $fio, loglog_commit: $loglog},
          settings: {runs: $runs_per, duration_s: $duration,
            workloads: {W1: {size: 128, writers: 64}, W2: {size: 65536, writers: 8},
                        R1: "LogLog only: read the whole log W2 wrote, from offset 0",
                        F1: "LogLog only: W1 on 3 nodes, leader SIGKILLed a third of the way in; failover_ms = longest time without an ack"}},
          medians: $medians, runs: $runs}' >"$OUT"

    echo
    echo "Medians of $RUNS run(s) x ${DURATION} s; W1 = 128 B x 64 writers, W2 = 64 KiB x 8 writers, R1 = read all."
    echo "ratio = LogLog / that system (MB/s, same workload and topology). Load generator on the same $(nproc)-core machine."
    printf '%-7s %-7s %-3s %12s %9s %9s %9s %8s  %s\n' system nodes wl ops/s MB/s p50_ms p99_ms ratio durability
    jq -r '.[] | [.system, .topology, .workload, .ops_per_s, .mb_per_s,
        (if .p50_us == null then "-" else .p50_us / 1000 end),
        (if .p99_us == null then "-" else .p99_us / 1000 end),
        (.loglog_ratio // "-"), .durability] | @tsv' <<<"$medians" |
        while IFS=$'\t' read -r system topology workload ops mb p50 p99 ratio durability; do
            [[ $p50 == - ]] || p50=$(printf '%.2f' "$p50")
            [[ $p99 == - ]] || p99=$(printf '%.2f' "$p99")
            [[ $ratio == - ]] || ratio=$(printf '%.2fx' "$ratio")
            printf '%-7s %-7s %-3s %12.0f %9.1f %9s %9s %8s  %s\n' \
                "$system" "$topology" "$workload" "$ops" "$mb" "$p50" "$p99" "$ratio" "$durability"
        done
    jq -r '.[] | select(.workload == "F1") |
        "F1 failover (3 nodes, leader SIGKILL to the next acknowledged append): \(.failover_ms | floor) ms, median of \(.runs)"' \
        <<<"$medians"
    echo
    log "raw figures: $OUT"
}

# ------------------------------------------------------------ main

install_missing
build
mkdir -p "$BASE_DIR"
WORK=$(mktemp -d "$BASE_DIR/loglog-peers.XXXXXX")
RAW=$WORK/runs.jsonl
: >"$RAW"
OUT=$(realpath -m "$OUT")
mkdir -p "$(dirname "$OUT")"

if "$LOGLOG" bench --help 2>/dev/null | grep -q -- '--read-all'; then
    HAVE_READ_ALL=1
else
    HAVE_READ_ALL=0
    log "notice: this loglog has no 'bench --read-all': R1 skipped"
fi

# The largest measurement (NATS W2 on one node, unsynced, up to ~600 MB/s
# here) must fit: without room JetStream refuses publishes mid-run.
free_bytes=$(df -B1 --output=avail "$WORK" | tail -1 | tr -d ' ')
need_bytes=$(awk -v seconds="$DURATION" 'BEGIN { printf "%.0f", seconds * 800e6 + 1e9 }')
((free_bytes >= need_bytes)) ||
    die "$((free_bytes / 1000000)) MB free in $WORK, a ${DURATION} s run needs about $((need_bytes / 1000000)) MB: use --dir elsewhere or a shorter --duration"

log "work dir $WORK ($(df -h --output=source,fstype "$WORK" | tail -1 | tr -s ' ')), $RUNS run(s) of ${DURATION} s"
# The disk is a shared virtual one with a burst budget: fio with three
# fdatasyncing writers gets about 600 MB/s for some seconds, then about
# 330 (bench/README.md). Whoever writes right after a heavy writer starts
# with less of it, so each run rotates the order of the systems.
SYSTEMS=(loglog etcd nats)
for run in $(seq 1 "$RUNS"); do
    rotation=$(((run - 1) % ${#SYSTEMS[@]}))
    order=("${SYSTEMS[@]:rotation}" "${SYSTEMS[@]:0:rotation}")
    for nodes in 1 3; do
        for workload in W1 W2; do
            for system in "${order[@]}"; do
                measure "$system" "$nodes" "$workload" "$run"
            done
        done
    done
    measure_failover "$run"
    measure_fio "$run" fio
    measure_fio "$run" fio-ow
    measure_fio "$run" fio 3
done
report
