#!/usr/bin/env bash
# Bulk sending (issue 11): SESSIONS connections x PER messages of about 1 KB
# from ONE Lua process with mailer.pool's send_all, against Postfix's own
# load generator smtp-source with the same sessions and message count, on
# the same smtp-sink. As bench/smtp.sh: the sink on CPU 0, the client on
# CPU 1, the best of REPEAT runs, the largest peak RSS.
#   bench/pool.sh            (needs a build in ./build; BUILD=dir to change)
# Debian's lua-copas is installed for Lua 5.1/5.2 only; its Lua files run on
# 5.4 too, so /usr/share/lua/5.2 is put on LUA_PATH here.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD=${BUILD:-build}
SESSIONS=${SESSIONS:-20}
PER=${PER:-100}
MSGS=$((SESSIONS * PER))
SINK_PORT=${SINK_PORT:-25252}
REPEAT=${REPEAT:-3}
export LUA_PATH="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua;;/usr/share/lua/5.2/?.lua"
export LUA_CPATH="$ROOT/$BUILD/?.so;;"
TMP=$(mktemp -d)
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

# run LABEL CMD...: wall time of the whole process (start-up included) on
# CPU 1, best of REPEAT; the largest peak RSS
run() {
  local label=$1; shift
  local best="" rss=0 k secs r extra=""
  for k in $(seq "$REPEAT"); do
    if ! /usr/bin/time -f "%e %M" -o "$TMP/time" taskset -c 1 "$@" >"$TMP/out" 2>"$TMP/err"; then
      printf '%-46s FAILED: %s\n' "$label" "$(tail -n 3 "$TMP/err" | tr '\n' ' ')"
      return
    fi
    read -r secs r <"$TMP/time"
    if [ -z "$best" ] || awk -v a="$secs" -v b="$best" 'BEGIN{exit !(a<b)}'; then best=$secs; fi
    rss=$(awk -v a="$r" -v b="$rss" 'BEGIN{print (a>b)?a:b}')
  done
  extra=$(grep -o 'runtime [a-z0-9]*' "$TMP/err" || true)
  awk -v n="$MSGS" -v s="$best" -v l="$label" -v r="$rss" -v x="$extra" \
    'BEGIN{printf "%-46s %8.0f msgs/s  %7.3f s  peak RSS %6.1f MiB  %s\n", l, n/s, s, r/1024, x}'
  echo "$best" >"$TMP/last"
}

echo "# $(date -u +%FT%TZ) $(nproc) CPUs; $SESSIONS sessions x $PER messages (~1 KB)"
run "smtp-source -s $SESSIONS -m $MSGS -l 1024" \
  /usr/sbin/smtp-source -s "$SESSIONS" -m "$MSGS" -l 1024 -f bench@example.com -t r1@example.com \
  -M bench.example.com "127.0.0.1:$SINK_PORT"
SRC=$(cat "$TMP/last")
run "smtp-source -d (connections kept)" \
  /usr/sbin/smtp-source -d -s "$SESSIONS" -m "$MSGS" -l 1024 -f bench@example.com -t r1@example.com \
  -M bench.example.com "127.0.0.1:$SINK_PORT"
SRCD=$(cat "$TMP/last")
for sock in "" cqueues c; do
  run "mailer pool:send_all (${sock:-default})" lua5.4 "$ROOT/bench/pool_bench.lua" "$SINK_PORT" "$SESSIONS" "$PER" "$sock"
  L=$(cat "$TMP/last")
  awk -v a="$SRC" -v b="$SRCD" -v m="$L" \
    'BEGIN{printf "%-46s %.2fx smtp-source, %.2fx smtp-source -d\n", "", a/m, b/m}'
done
