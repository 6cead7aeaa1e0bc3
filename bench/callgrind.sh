#!/usr/bin/env bash
# bench/callgrind.sh: instructions per append of a single node, counted by
# callgrind (repeatable on a busy machine, unlike timings).
#
#   bench/callgrind.sh [PORT] [-- loglog bench args]
#   e.g. bench/callgrind.sh 19515 -- --writers 64 --size 128 --duration 15s
#
# Runs the release loglogd under `valgrind --tool=callgrind` in a fresh data
# directory, drives it with `loglog bench` for the given arguments, stops it
# with SIGINT and prints the total instructions divided by the appends. The
# profile stays in the printed directory (`callgrind_annotate FILE`).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PORT=${1:-19515}
shift || true
[[ ${1:-} == -- ]] && shift
BENCH_ARGS=("$@")
((${#BENCH_ARGS[@]})) || BENCH_ARGS=(--writers 64 --size 128 --duration 15s)
command -v valgrind >/dev/null || { echo "callgrind.sh: needs valgrind" >&2; exit 2; }
(cd "$REPO" && cargo build --release --quiet -p loglogd -p loglog-cli)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}/release
DIR=$(mktemp -d "${TMPDIR:-/tmp}/loglog-callgrind.XXXXXX")
valgrind --tool=callgrind --callgrind-out-file="$DIR/loglogd.cg" \
    "$TARGET/loglogd" --data-dir "$DIR/data" --listen "127.0.0.1:$PORT" >"$DIR/loglogd.log" 2>&1 &
NODE=$!
# Under valgrind the node starts slowly.
for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done
RESULT=$("$TARGET/loglog" --cluster "127.0.0.1:$PORT" bench --json "${BENCH_ARGS[@]}")
kill -INT "$NODE"
wait "$NODE" || true
APPENDS=$(jq -r .appends <<<"$RESULT")
TOTAL=$(callgrind_annotate "$DIR/loglogd.cg" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
echo "appends=$APPENDS instructions=$TOTAL per_append=$((TOTAL / APPENDS)) profile=$DIR/loglogd.cg"
