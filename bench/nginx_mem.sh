#!/usr/bin/env bash
# Memory per send in flight inside nginx (the one-driver issue): N (500)
# concurrent sends in one worker to a sink that stalls each DATA body for
# STALL (6) seconds; prints the worker's RSS before and at its peak, and
# the delta per send. Needs nginx + libnginx-mod-http-lua + lua-resty-core
# and the LuaJIT build (build-luajit/). Run by hand:  bench/nginx_mem.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-500} STALL=${STALL:-6} KIB=${KIB:-2048} PORT=${PORT:-25260}
[ -f build-luajit/core.so ] || { cmake -S . -B build-luajit -DMAILER_LUA=luajit -DMAILER_TESTS=OFF >/dev/null &&
  cmake --build build-luajit --target core -j2 >/dev/null; }
/usr/bin/python3 bench/slow_sink.py "$PORT" "$STALL" > /tmp/mailer-slow-sink.$$ &
SINK=$!
trap 'kill $SINK 2>/dev/null || true; rm -f /tmp/mailer-slow-sink.$$' EXIT
for _ in $(seq 50); do grep -q READY /tmp/mailer-slow-sink.$$ && break; sleep 0.1; done
ulimit -n 4096 2>/dev/null || true
LUA_PATH="$PWD/lua/?.lua;$PWD/spec/?.lua;;" lua5.4 bench/nginx_mem.lua "$PORT" "$N" "$STALL" "$KIB"
