#!/usr/bin/env bash
# Run every fuzz target (or those named after the time) for a fixed time,
# starting from its committed seed corpus (copied into a scratch corpus,
# so the committed one stays small), with its dictionary when it has one.
#   fuzz/run.sh [seconds] [target...]     default 60 seconds, every target
# Env: OUT (build dir, default build-fuzz), FUZZ_JOBS (targets run at the
# same time, default 1). Prints "ok - fuzz <t>" / "not ok - fuzz <t>" and a
# "# <t>: ..." line with exec/s and coverage; exits non-zero when any target
# crashed, leaked, timed out or ran out of memory (the input that did it is
# kept as $OUT/crashes/<t>-*).
set -uo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
[ $# -gt 0 ] && shift
OUT=${OUT:-build-fuzz}
JOBS=${FUZZ_JOBS:-1}
if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for f in fuzz/fuzz_*.c; do
    t=$(basename "$f" .c); t=${t#fuzz_}
    [ "$t" = util ] || targets+=("$t")
  done
fi
mkdir -p "$OUT/crashes" "$OUT/logs"

run_one() { # target
  local t=$1 work="$OUT/work/$t" bin="$OUT/fuzz_$t" args=()
  if [ ! -x "$bin" ]; then
    echo "missing $bin (run fuzz/build.sh)" >"$OUT/logs/$t.log"; return 1
  fi
  mkdir -p "$work"
  [ -d "fuzz/corpus/$t" ] && cp -n fuzz/corpus/"$t"/* "$work"/ 2>/dev/null
  [ -f "fuzz/dict/$t.dict" ] && args+=("-dict=fuzz/dict/$t.dict")
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
  # -timeout is wall time: in CI the fuzzers run at nice 19 beside the
  # suites and can be starved for seconds, so a unit gets FUZZ_TIMEOUT
  # (60 s) before it counts as a hang
  "$bin" "${args[@]}" -max_total_time="$SECS" -timeout="${FUZZ_TIMEOUT:-60}" -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$OUT/crashes/$t-" "$work" >"$OUT/logs/$t.log" 2>&1
}

report() { # target, exit code
  local t=$1 rc=$2 log="$OUT/logs/$1.log" stats
  stats=$(grep -E '^#[0-9]+[[:space:]]+(DONE|INITED)' "$log" | tail -n 1 |
    sed -E 's/.*cov: ([0-9]+) ft: ([0-9]+).*exec\/s: ([0-9]+).*/cov \1, ft \2, exec\/s \3/')
  if [ "$rc" -eq 0 ]; then
    echo "ok - fuzz $t"
  else
    echo "not ok - fuzz $t (exit $rc)"
    grep -aE 'invariant violated|ERROR:|SUMMARY:|runtime error|Test unit written' "$log" | head -n 8 | sed 's/^/#   /'
  fi
  echo "# $t: ${stats:-no stats}, $(grep -a -m1 -E '^stat::number_of_executed_units' "$log" | awk '{print $2}') runs in ${SECS}s"
}

failed=0
pids=()
names=()
for t in "${targets[@]}"; do
  run_one "$t" &
  pids+=($!)
  names+=("$t")
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 1; done
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}"
  rc=$?
  report "${names[$i]}" "$rc"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
done
[ "$failed" -eq 0 ]
