#!/usr/bin/env bash
# Build the libFuzzer targets (fuzz/fuzz_*.c) with clang, AddressSanitizer
# and UBSan into $OUT (default: build-fuzz). The core is compiled with
# coverage instrumentation; OpenSSL and libidn2 come from the system.
#   fuzz/build.sh            build every target
#   fuzz/build.sh reply qp   build only these
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build-fuzz}
CC=${CC:-clang}
# the core: every csrc/*.c but the Lua binding (as in CMakeLists.txt)
CORE=$(for f in csrc/*.c; do b=$(basename "$f" .c); case $b in lmailer*|lsocket) ;; *) echo "$b" ;; esac; done)
COMMON=(-g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined
        -fno-sanitize-recover=undefined -std=c99 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE
        -Wall -Wextra -Wshadow -Wmissing-prototypes -Icsrc -Ifuzz)
mkdir -p "$OUT/obj"

objs=()
for c in $CORE; do
  o="$OUT/obj/$c.o"
  if [ ! -e "$o" ] || [ "csrc/$c.c" -nt "$o" ] || [ "$(ls -t csrc/*.h | head -1)" -nt "$o" ]; then
    "$CC" "${COMMON[@]}" -fsanitize=fuzzer-no-link -c "csrc/$c.c" -o "$o"
  fi
  objs+=("$o")
done
"$CC" "${COMMON[@]}" -Werror -c fuzz/fuzz_util.c -o "$OUT/obj/fuzz_util.o"
objs+=("$OUT/obj/fuzz_util.o")

if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for f in fuzz/fuzz_*.c; do
    t=$(basename "$f" .c); t=${t#fuzz_}
    [ "$t" = util ] || targets+=("$t")
  done
fi
for t in "${targets[@]}"; do
  "$CC" "${COMMON[@]}" -Werror -fsanitize=fuzzer "fuzz/fuzz_$t.c" "${objs[@]}" -lssl -lcrypto -lidn2 \
    -o "$OUT/fuzz_$t"
  echo "built $OUT/fuzz_$t"
done
