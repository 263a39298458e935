#!/usr/bin/env bash
# codecs.sh - body encoder throughput: ours vs LuaSocket, coreutils, Python.
#
#   bench/codecs.sh [BUILD_DIR]      (default build/)
#
# Makes bench/out/rand.bin (B64_MB MiB random, default 256) and
# bench/out/text.txt (QP_MB MiB of mostly-ASCII text with some UTF-8 and
# LF line ends, default 64), checks that our outputs decode back to the
# input, then times every encoder on the same files pinned to one core
# (CPU, default 1), best of REPS interleaved rounds (default 3; LuaSocket
# only in the first LUA_REPS, default 1, as it is slow), in CPU seconds
# (user + system; TIMING=wall for wall seconds). Everything reads the file
# and writes to /dev/null. Ours is also timed in-process at each
# SIMD level (bench_codecs' B64_LEVEL / QP_LEVEL). Needs lua5.4 +
# lua-socket, python3, coreutils, taskset.
set -euo pipefail
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$SELF")/.."

BUILD=${1:-build}
B64_MB=${B64_MB:-256}
QP_MB=${QP_MB:-64}
CPU=${CPU:-1}
REPS=${REPS:-3}
LUA_REPS=${LUA_REPS:-1}
LUA=${LUA:-lua5.4}
PY=${PY:-/usr/bin/python3}
TIMING=${TIMING:-cpu}
OUT=bench/out
mkdir -p "$OUT"

# Build: the whole tree through CMake; if someone's half-edited file
# breaks that, build just the codecs and the bench program directly.
BIN=$BUILD/bench_codecs
if ! { [ -f "$BUILD/CMakeCache.txt" ] || cmake -S . -B "$BUILD" >/dev/null; } ||
   ! cmake --build "$BUILD" --target bench_codecs -j2 >/dev/null; then
    echo "cmake build failed; compiling the codecs directly" >&2
    BIN=$OUT/bench_codecs
    cc -std=c99 -O2 -D_DEFAULT_SOURCE -Icsrc -o "$BIN" \
        csrc/codec_base64.c csrc/codec_qp.c bench/bench_codecs.c
fi

RAND=$OUT/rand.bin
TEXT=$OUT/text.txt
if [ ! -f "$RAND" ] || [ "$(stat -c %s "$RAND")" -ne $((B64_MB << 20)) ]; then
    head -c $((B64_MB << 20)) /dev/urandom > "$RAND"
fi
if [ ! -f "$TEXT" ] || [ "$(stat -c %s "$TEXT")" -ne $((QP_MB << 20)) ]; then
    "$PY" - "$TEXT" $((QP_MB << 20)) <<'EOF'
import random, sys
# Lines of 0..110 chars of words; about one word in 25 carries non-ASCII.
path, size = sys.argv[1], int(sys.argv[2])
rnd = random.Random(2045)
words = ("the of and to in is that for it as was with be by on not he this are "
         "or his from at which but have an they you were her all she there would "
         "their we him been has when who will more no if out so said what up its "
         "about into than them can only other new some could time these two may "
         "message header attachment boundary encoding delivery server = a.b").split()
special = ["\u00fc", "\u20ac", "\u4f60", "Gr\u00fc\u00dfe", "caf\u00e9", "\u00e0 bient\u00f4t"]
lines, total = [], 0
while total < (8 << 20):
    width = rnd.choice((0, 20, 40, 60, 70, 72, 74, 76, 80, 90, 110))
    line = []
    n = 0
    while n < width:
        w = rnd.choice(special) if rnd.random() < 0.04 else rnd.choice(words)
        line.append(w)
        n += len(w) + 1
    s = (" ".join(line) + "\n").encode()
    lines.append(s)
    total += len(s)
block = b"".join(lines)
with open(path, "wb") as f:
    left = size
    while left > 0:
        f.write(block[:left])
        left -= min(left, len(block))
EOF
fi

# Correctness first (once): our outputs must decode to the input. Then
# run again pinned to one core, so no taskset sits inside the timings.
if [ -z "${CODECS_PINNED:-}" ]; then
"$BIN" b64 "$RAND" "$OUT/ours.b64" >/dev/null
"$BIN" qp "$TEXT" "$OUT/ours.qp" >/dev/null
"$PY" - "$RAND" "$OUT/ours.b64" "$TEXT" "$OUT/ours.qp" <<'EOF'
import base64, binascii, sys
raw, b64, text, qp = (open(p, "rb").read() for p in sys.argv[1:5])
assert all(len(l) <= 76 for l in b64.split(b"\r\n")), "base64 line too long"
assert base64.b64decode(b64.replace(b"\r\n", b""), validate=True) == raw, "base64 mismatch"
assert b"\n" not in qp.replace(b"\r\n", b""), "bare LF in QP"
assert all(len(l) <= 76 for l in qp.split(b"\r\n")), "QP line too long"
assert binascii.a2b_qp(qp) == text.replace(b"\n", b"\r\n"), "QP mismatch"
print("outputs verified: base64 and QP decode back to the input")
EOF
rm -f "$OUT/ours.b64" "$OUT/ours.qp"
CODECS_PINNED=1 exec taskset -c "$CPU" "$SELF" "$@"
fi

cat > "$OUT/b64.lua" <<'EOF'
local mime, ltn12 = require "mime", require "ltn12"
ltn12.BLOCKSIZE = 65536
local f = ltn12.filter.chain(mime.encode("base64"), mime.wrap("base64"))
ltn12.pump.all(ltn12.source.chain(ltn12.source.file(io.open(arg[1], "rb")), f),
               ltn12.sink.file(io.open("/dev/null", "wb")))
EOF
cat > "$OUT/qp.lua" <<'EOF'
local mime, ltn12 = require "mime", require "ltn12"
ltn12.BLOCKSIZE = 65536
local f = ltn12.filter.chain(mime.encode("quoted-printable"), mime.wrap("quoted-printable"))
if arg[2] == "normalize" then f = ltn12.filter.chain(mime.normalize(), f) end
ltn12.pump.all(ltn12.source.chain(ltn12.source.file(io.open(arg[1], "rb")), f),
               ltn12.sink.file(io.open("/dev/null", "wb")))
EOF
PY_B64='import base64, sys
enc, out = base64.encodebytes, open("/dev/null", "wb")
with open(sys.argv[1], "rb") as f:
    while True:
        b = f.read(57 * 1150)   # whole 76-char lines per block
        if not b: break
        out.write(enc(b))'
PY_QP='import quopri, sys
open("/dev/null", "wb").write(quopri.encodestring(open(sys.argv[1], "rb").read()))'

# The encoders, one function each: name, MiB of input, runs wanted.
b64_ours() { "$BIN" b64 "$RAND" /dev/null; }
b64_coreutils() { base64 -w 76 "$RAND" >/dev/null; }
b64_python() { "$PY" -c "$PY_B64" "$RAND"; }
b64_luasocket() { "$LUA" "$OUT/b64.lua" "$RAND"; }
b64_cat() { cat "$RAND" >/dev/null; }
qp_ours() { "$BIN" qp "$TEXT" /dev/null; }
qp_python() { "$PY" -c "$PY_QP" "$TEXT"; }
qp_luasocket() { "$LUA" "$OUT/qp.lua" "$TEXT"; }
qp_luasocket_norm() { "$LUA" "$OUT/qp.lua" "$TEXT" normalize; }
FUNCS=(b64_ours b64_coreutils b64_python b64_luasocket b64_cat
       qp_ours qp_python qp_luasocket qp_luasocket_norm)
NAMES=("b64 ours (bench_codecs)" "b64 coreutils base64 -w 76"
       "b64 python3 base64.encodebytes" "b64 LuaSocket b64+wrap (ltn12)"
       "cat (ceiling)" "qp ours (bench_codecs)" "qp python3 quopri.encodestring"
       "qp LuaSocket qp+qpwrap (ltn12)" "qp LuaSocket normalize+qp+qpwrap")
MIBS=("$B64_MB" "$B64_MB" "$B64_MB" "$B64_MB" "$B64_MB" "$QP_MB" "$QP_MB" "$QP_MB" "$QP_MB")
SECS=()

# Seconds of one run (bash's time: no extra process inside the interval;
# the script itself is pinned, so the command inherits the core): CPU
# seconds, user + system, with TIMING=cpu (the default), so that other
# load on a shared machine does not count; wall seconds with TIMING=wall.
once() {
    local t TIMEFORMAT='%3R %3U %3S'
    if ! t=$( { time "$1" >/dev/null 2>"$OUT/err"; } 2>&1 ); then
        echo "failed: $1" >&2
        cat "$OUT/err" >&2
        exit 1
    fi
    if [ "$TIMING" = wall ]; then
        echo "${t%% *}"
    else
        awk -v t="$t" 'BEGIN { split(t, a, " "); printf "%.3f", a[2] + a[3] }'
    fi
}

# Rounds interleave the encoders, so a burst of load from elsewhere hits
# one round of everyone rather than all runs of one; keep each best.
echo "base64, $B64_MB MiB random, 76-char lines; QP, $QP_MB MiB text; cpu $CPU, best of $REPS, $TIMING time"
for ((round = 0; round < REPS; round++)); do
    for i in "${!FUNCS[@]}"; do
        case ${FUNCS[$i]} in *luasocket*) [ "$round" -lt "$LUA_REPS" ] || continue ;; esac
        t=$(once "${FUNCS[$i]}")
        SECS[$i]=$(awk -v a="$t" -v b="${SECS[$i]:-}" 'BEGIN { print (b == "" || a < b) ? a : b }')
    done
done

# Ours in-process (no exec, no page-cache warm-up in the interval), for
# reference; with a level ("B64_LEVEL=2") to time one implementation.
inproc() {
    local i
    local f=7 # CPU MiB/s; 5 is wall
    [ "$TIMING" = wall ] && f=5
    for ((i = 0; i < REPS; i++)); do env ${3:-} "$BIN" "$1" "$2" /dev/null; done |
        awk -v f=$f '$f > b { b = $f } END { printf "%s", b }'
}
INB=$(inproc b64 "$RAND")
INQ=$(inproc qp "$TEXT")
LEVELS_B64=""
for l in 0 1 2 3; do
    LEVELS_B64="$LEVELS_B64 $(inproc b64 "$RAND" B64_LEVEL=$l)"
done
LEVELS_QP=""
for l in 0 1 2; do
    LEVELS_QP="$LEVELS_QP $(inproc qp "$TEXT" QP_LEVEL=$l)"
done

# Table: MiB/s and how many times faster ours is than each peer.
printf '\n%-34s %9s %10s %9s\n' "encoder" "seconds" "MiB/s" "ours/x"
ours_b64=$(awk -v m="${MIBS[0]}" -v s="${SECS[0]}" 'BEGIN { print m / s }')
ours_qp=$(awk -v m="${MIBS[5]}" -v s="${SECS[5]}" 'BEGIN { print m / s }')
for i in "${!NAMES[@]}"; do
    ref=$ours_b64
    case ${NAMES[$i]} in qp*) ref=$ours_qp ;; esac
    awk -v n="${NAMES[$i]}" -v m="${MIBS[$i]}" -v s="${SECS[$i]}" -v r="$ref" \
        'BEGIN { v = m / s; printf "%-34s %9.3f %10.1f %8.2fx\n", n, s, v, r / v }'
done
echo "(ours timed in-process by bench_codecs: base64 $INB MiB/s, QP $INQ MiB/s;"
echo " the table times every program the same way, from exec to exit)"
echo "ours in-process by level (a level this CPU lacks runs the best it has):"
echo " base64 portable/SSSE3/AVX2/AVX-512 VBMI:$LEVELS_B64 MiB/s"
echo " QP portable/SSE2/AVX-512 VBMI2:$LEVELS_QP MiB/s"

# A whole message over the same text: time and memory to build it and
# render it through chunks(), the text given by path (streamed: one bounded
# pass to check and measure, then encoded as read) and as a Lua string
# (borrowed, never copied). Memory: the peak resident size while building
# and rendering, above what the process held before (the string, when
# given, is read first and not counted: the peak is reset after it). The
# chunks are collected as they go, so the figure is the library's.
msg_rss() {   # mode -> "seconds base_KiB peak_KiB"
    taskset -c "$CPU" env \
        LUA_PATH="$PWD/lua/?.lua;$PWD/lua/?/init.lua;;" LUA_CPATH="$PWD/$BUILD/?.so;;" \
        "$LUA" - "$TEXT" "$1" <<'LUA'
local mailer = require "mailer"
local path, mode = arg[1], arg[2]
local text = { path = path }
if mode == "string" then
  local f = assert(io.open(path, "rb"))
  text = f:read("*a")
  f:close()
end
collectgarbage("collect")
local function status(k)
  local f = assert(io.open("/proc/self/status"))
  local v = f:read("*a"):match(k .. ":%s*(%d+)")
  f:close()
  return tonumber(v)
end
local cr = io.open("/proc/self/clear_refs", "w")
if cr then cr:write("5") cr:close() end   -- resets the peak (VmHWM)
local base = status("VmRSS")
local t0 = os.clock()
local m = assert(mailer.message { from = "a@example.com", to = "b@example.com", subject = "big text", text = text })
local n, k = 0, 0
for chunk in m:chunks() do
  n, k = n + #chunk, k + 1
  -- (the chunks are garbage at once; with a 64 MiB string alive Lua's
  -- collector would let some 64 MiB of them pile up before it runs)
  if k % 64 == 0 then collectgarbage("collect") end
end
assert(n == m:size())
print(os.clock() - t0, base, status("VmHWM"))
LUA
}
echo "a message over the ${QP_MB} MiB text, built and rendered through chunks():"
for mode in path string; do
    read -r s b k <<<"$(msg_rss $mode)"
    awk -v s="$s" -v b="$b" -v k="$k" -v m="$mode" 'BEGIN { printf " text = %-10s %6.2f s CPU, peak RSS %6.1f MiB above the %6.1f MiB before\n", (m == "path" ? "{ path = }" : "string"), s, (k - b) / 1024, b / 1024 }'
done
