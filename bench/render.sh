#!/usr/bin/env bash
# Render a message with a 256 MiB attachment through chunks(): wall time and
# peak RSS. Run by hand: bench/render.sh   (builds a Release tree in build/)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/out
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build build -j2 >/dev/null
f=bench/out/random-256M.bin
[ -f "$f" ] || head -c $((256 * 1024 * 1024)) /dev/urandom > "$f"
cat "$f" > /dev/null # warm the page cache
export LUA_PATH="$PWD/lua/?.lua;;" LUA_CPATH="$PWD/build/?.so;;"
for size in 65536 1048576; do
  /usr/bin/time -f "peak RSS %M KiB, wall %e s" taskset -c 1 lua5.4 bench/render.lua "$f" "$size"
done
echo "baseline: lua5.4 startup + require mailer:"
/usr/bin/time -f "peak RSS %M KiB" lua5.4 -e 'require "mailer"'
