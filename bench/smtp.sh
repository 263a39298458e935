#!/usr/bin/env bash
# SMTP benchmarks (issues 3 and 12): mailer against LuaSocket's socket.smtp
# (with and without TCP_NODELAY), Python's smtplib and minimal raw clients
# (bench/smtp_raw.py in Python, bench_smtp_raw.c in C).
#   W1: 2000 small messages (1 KB text, 3 recipients) over one connection
#   W2: 300 messages, a new connection each
#   W3: one message with a 64 MiB attachment (wall time, peak RSS)
#   W4: W1 against a server that offers CHUNKING: BDAT pipelined back to
#       back (mailer, raw Python with 8 messages in flight) and DATA
# W1/W2 run against Postfix's smtp-sink (which offers no CHUNKING), W3 and
# W4 against bench_smtp_discard (a minimal discard server of ours that
# batches its replies; smtp-sink tops out far below the clients).
# The server is pinned to CPU 0 and the client to CPU 1. Run from anywhere:
#   bench/smtp.sh            (needs a build in ./build; BUILD=dir to change;
#                             ONLY=W1..W4 runs one workload)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD=${BUILD:-build}
W1=${W1:-2000}
W2=${W2:-300}
W3_MIB=${W3_MIB:-64}
SINK_PORT=${SINK_PORT:-25250}
DISCARD_PORT=${DISCARD_PORT:-25251}
export LUA_PATH="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua;;"
export LUA_CPATH="$ROOT/$BUILD/?.so;;"
PY=/usr/bin/python3
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

[ -x "$BUILD/bench_smtp_raw" ] || { echo "build first: cmake --build $BUILD"; exit 1; }

# Pre-rendered inputs for the peers: W1 messages (a directory, for Python, and
# one file for the raw client) and the W3 message file.
lua5.4 - "$TMP" "$W1" "$W3_MIB" <<'LUA'
local dir, count, mib = arg[1], tonumber(arg[2]), tonumber(arg[3])
local mailer = require "mailer"
local text = string.rep("The quick brown fox jumps over the lazy dog. 0123456789\n", 18)
os.execute("mkdir -p " .. dir .. "/w1")
for i = 1, count do
  local m = assert(mailer.message { from = "bench@example.com",
    to = { "r1@example.com", "r2@example.com", "r3@example.com" }, subject = "bench " .. i,
    text = text, message_id = "<bench" .. i .. "@example.com>", date = 1700000000 })
  local f = assert(io.open(("%s/w1/%06d.eml"):format(dir, i), "wb"))
  f:write(assert(m:render()))
  f:close()
end
local f = assert(io.open(dir .. "/big.bin", "wb"))
local block = {}
for i = 1, 65536 do block[i] = string.char((i * 7919) % 256) end
block = table.concat(block)
for _ = 1, mib * 16 do f:write(block) end
f:close()
local m = assert(mailer.message { from = "bench@example.com",
  to = { "r1@example.com", "r2@example.com", "r3@example.com" }, subject = "big",
  text = "see attachment", attachments = { { path = dir .. "/big.bin", filename = "big.bin" } },
  message_id = "<big@example.com>", date = 1700000000 })
f = assert(io.open(dir .. "/big.bin.eml", "wb"))
for chunk in m:chunks(65536) do f:write(chunk) end
f:close()
LUA
cp "$TMP/w1/000001.eml" "$TMP/w1one.eml"
EML_BYTES=$(stat -c %s "$TMP/big.bin.eml")

taskset -c 0 /usr/sbin/smtp-sink -u nobody "127.0.0.1:$SINK_PORT" 256 &
PIDS+=($!)
taskset -c 0 "$BUILD/bench_smtp_discard" "$DISCARD_PORT" &
PIDS+=($!)
CHUNK_PORT=${CHUNK_PORT:-25252}
taskset -c 0 "$BUILD/bench_smtp_discard" "$CHUNK_PORT" 1000000 chunking &
PIDS+=($!)
sleep 0.5

# run LABEL WORKLOAD CMD... : time the client on CPU 1, REPEAT times (the
# loopback figures are noisy); prints the best run and the largest peak RSS.
REPEAT=${REPEAT:-3}
run() {
  local label=$1 w=$2; shift 2
  [ -n "${ONLY:-}" ] && [ "$w" != "$ONLY" ] && return   # ONLY=W4: one workload
  local out n secs rss best="" k r
  rss=0
  for k in $(seq "$REPEAT"); do
    if ! out=$(/usr/bin/time -f "%e %M" -o "$TMP/time" taskset -c 1 "$@" 2>"$TMP/err"); then
      printf '%-34s %-3s FAILED: %s\n' "$label" "$w" "$(tail -n 2 "$TMP/err" | tr '\n' ' ')"
      return
    fi
    read -r n secs <<<"$(printf '%s\n' "$out" | tail -n 1)"
    if [ -z "$best" ] || awk -v a="$secs" -v b="$best" 'BEGIN{exit !(a<b)}'; then best=$secs; fi
    r=$(awk '{printf "%.1f", $2/1024}' "$TMP/time")
    rss=$(awk -v a="$r" -v b="$rss" 'BEGIN{print (a>b)?a:b}')
  done
  secs=$best
  if [ "$w" = W3 ]; then
    awk -v b="$EML_BYTES" -v s="$secs" -v l="$label" -v r="$rss" \
      'BEGIN{printf "%-34s W3  %8.1f MiB/s  %7.3f s  peak RSS %6.1f MiB\n", l, b/1048576/s, s, r}'
  else
    awk -v n="$n" -v s="$secs" -v l="$label" -v w="$w" -v r="$rss" \
      'BEGIN{printf "%-34s %s  %8.0f msgs/s  %7.3f s  peak RSS %6.1f MiB\n", l, w, n/s, s, r}'
  fi
}

echo "# $(date -u +%FT%TZ) $(nproc) CPUs; W1=$W1 W2=$W2 W3=${W3_MIB} MiB attachment ($EML_BYTES octets on the wire)"
B="lua5.4 $ROOT/bench/smtp_bench.lua"
run "mailer send_many"                W1 $B mailer-many W1 "$SINK_PORT" "$W1"
run "mailer send (one by one)"        W1 $B mailer-send W1 "$SINK_PORT" "$W1"
run "LuaSocket smtp"                  W1 $B luasocket W1 "$SINK_PORT" "$W1"
run "LuaSocket smtp + TCP_NODELAY"    W1 $B luasocket-nodelay W1 "$SINK_PORT" "$W1"
run "Python smtplib"                  W1 "$PY" "$ROOT/bench/smtp_bench.py" W1 "$SINK_PORT" "$TMP/w1"
run "raw pipelined reference (C)"     W1 "$BUILD/bench_smtp_raw" 127.0.0.1 "$SINK_PORT" "$W1" 3 "$TMP/w1one.eml"
run "raw pipelined Python (RFC 2920)" W1 "$PY" "$ROOT/bench/smtp_raw.py" data "$SINK_PORT" "$TMP/w1"
run "mailer (mailer.send each)"       W2 $B mailer-send W2 "$SINK_PORT" "$W2"
run "LuaSocket smtp"                  W2 $B luasocket W2 "$SINK_PORT" "$W2"
run "LuaSocket smtp + TCP_NODELAY"    W2 $B luasocket-nodelay W2 "$SINK_PORT" "$W2"
run "Python smtplib"                  W2 "$PY" "$ROOT/bench/smtp_bench.py" W2 "$SINK_PORT" "$TMP/w1" "$W2"
run "raw reference (C), per connection" W2 "$BUILD/bench_smtp_raw" 127.0.0.1 "$SINK_PORT" "$W2" 3 "$TMP/w1one.eml" per-connection
run "mailer (streams + base64 + dot)" W3 $B mailer W3 "$DISCARD_PORT" "$TMP/big.bin"
run "LuaSocket smtp (pre-rendered)"   W3 $B luasocket W3 "$DISCARD_PORT" "$TMP/big.bin"
run "LuaSocket + TCP_NODELAY"         W3 $B luasocket-nodelay W3 "$DISCARD_PORT" "$TMP/big.bin"
run "Python smtplib (pre-rendered)"   W3 "$PY" "$ROOT/bench/smtp_bench.py" W3 "$DISCARD_PORT" "$TMP/big.bin"
run "raw pipelined reference (C)"     W3 "$BUILD/bench_smtp_raw" 127.0.0.1 "$DISCARD_PORT" 1 3 "$TMP/big.bin.eml"
# (W4 runs are a few hundredths of a second: best of more rounds)
REPEAT=${W4_REPEAT:-10}
run "mailer send_many (BDAT pipelined)" W4 $B mailer-many W1 "$CHUNK_PORT" "$W1"
run "mailer send_many (chunking=false)" W4 $B mailer-many-data W1 "$CHUNK_PORT" "$W1"
run "raw Python, BDAT, 8 in flight"   W4 "$PY" "$ROOT/bench/smtp_raw.py" bdat "$CHUNK_PORT" "$TMP/w1" 8
run "raw C, BDAT, 8 in flight"        W4 "$BUILD/bench_smtp_raw" 127.0.0.1 "$CHUNK_PORT" "$W1" 3 "$TMP/w1one.eml" bdat
run "raw Python, DATA (RFC 2920)"     W4 "$PY" "$ROOT/bench/smtp_raw.py" data "$CHUNK_PORT" "$TMP/w1"
