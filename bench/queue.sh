#!/usr/bin/env bash
# Queue benchmarks (issue 14):
#   add    COUNT small messages (1 KB text, 3 recipients) into a queue: each
#          add writes and fsyncs the message and its metadata, fsyncs the
#          entry's directory, renames it into place and fsyncs the queue
#          directory; the outbox writer (no fsync) for comparison
#   run    the same COUNT entries delivered to Postfix's smtp-sink over one
#          connection, each claimed (flock), sent, and removed; then two
#          runners at once on another COUNT entries
# The sink is pinned to CPU 0 and the clients to CPU 1. The queue lives in
# $QUEUE_TMP (default: a new directory under /tmp; fsync costs depend on
# the file system under it). Run from anywhere:
#   bench/queue.sh            (needs a build in ./build; BUILD=dir to change)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD=${BUILD:-build}
COUNT=${COUNT:-2000}
SINK_PORT=${SINK_PORT:-25252}
export LUA_PATH="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua;;"
export LUA_CPATH="$ROOT/$BUILD/?.so;;"
TMP=$(mktemp -d "${QUEUE_TMP:-/tmp}/mailer-queue-bench.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

[ -f "$BUILD/mailer/core.so" ] || { echo "build first: cmake --build $BUILD"; exit 1; }

taskset -c 0 /usr/sbin/smtp-sink -u nobody "127.0.0.1:$SINK_PORT" 256 &
PIDS+=($!)
sleep 0.5

B="lua5.4 $ROOT/bench/queue_bench.lua"
report() {   # LABEL "<n> <seconds>"
  awk -v l="$1" '{printf "%-44s %6d msgs  %7.3f s  %8.0f msgs/s\n", l, $1, $2, $1/$2}' <<<"$2"
}
fs=$(df -T "$TMP" | awk 'NR==2{print $2}')
echo "# $(date -u +%FT%TZ) $(nproc) CPUs; COUNT=$COUNT; queue on $fs ($TMP)"
report "queue add (fsync: file, metadata, 2 dirs)" "$(taskset -c 1 $B add "$TMP/q1" "$COUNT")"
report "outbox writer (no fsync), for comparison" "$(taskset -c 1 $B outbox "$TMP/outbox" "$COUNT")"
report "queue run to smtp-sink (one runner)" "$(taskset -c 1 $B run "$TMP/q1" "$SINK_PORT")"
taskset -c 1 $B add "$TMP/q2" "$COUNT" >/dev/null
start=$(date +%s.%N)
taskset -c 1 $B run "$TMP/q2" "$SINK_PORT" >"$TMP/r1" &
r1=$!
taskset -c 1 $B run "$TMP/q2" "$SINK_PORT" >"$TMP/r2" &
r2=$!
wait $r1 $r2
end=$(date +%s.%N)
n1=$(awk '{print $1}' "$TMP/r1"); n2=$(awk '{print $1}' "$TMP/r2")
report "queue run, two runners at once ($n1 + $n2)" "$((n1 + n2)) $(awk -v a="$start" -v b="$end" 'BEGIN{print b-a}')"
left=$(find "$TMP/q2" -mindepth 1 -maxdepth 1 | wc -l)
[ "$left" = 0 ] || echo "!! $left entries left in the queue"
