#!/usr/bin/env bash
# Soak test of the simulated cluster: runs COUNT seeds from FIRST and prints the summary (seeds
# run, faults injected by kind, pushes by status, invariant checks done) and every failed seed
# with the command that replays it.
#
#   sim/soak.sh [COUNT] [FIRST] [--jobs J] [--batch] [--known]
#
#   COUNT    seeds to run (default 1000); FIRST: first seed (default: a new one each run, from
#            the clock, so soak runs explore; pass it to repeat a range, as CI does)
#   --jobs   seeds run at once (default 2)
#   --batch  one test process for the whole range (MADSIM_TEST_NUM, MADSIM_TEST_JOBS) instead
#            of one process per seed (faster to start; runs are deterministic either way).
#   --known  ignore sim/src/known.rs and print the failing seeds as entries for it
#
# Exit status: 0 when no seed failed outside the known list.
set -euo pipefail
cd "$(dirname "$0")/.."

count=1000
first=""
jobs=2
batch=0
known=0
positional=()
while [ $# -gt 0 ]; do
  case "$1" in
    --jobs) jobs="$2"; shift 2 ;;
    --batch) batch=1; shift ;;
    --known) known=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) positional+=("$1"); shift ;;
  esac
done
[ ${#positional[@]} -ge 1 ] && count="${positional[0]}"
[ ${#positional[@]} -ge 2 ] && first="${positional[1]}"
[ -z "$first" ] && first=$(( $(date +%s) % 100000000 ))

export RUSTFLAGS="--cfg madsim"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/sim}"
[ "$known" = 1 ] && export PUSHGATE_SIM_IGNORE_KNOWN=1

echo "== building the simulation (RUSTFLAGS=\"$RUSTFLAGS\", CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
build_log=$(mktemp)
if ! cargo test -p pushgate-sim --test sim --no-run >"$build_log" 2>&1; then
  echo "error: could not build the sim test binary; the build said:" >&2
  tail -n 40 "$build_log" >&2
  rm -f "$build_log"
  exit 1
fi
binary=$(sed -n 's/.*Executable tests\/sim.rs (\(.*\))/\1/p' "$build_log" | tail -1)
rm -f "$build_log"
if [ -z "$binary" ] || [ ! -x "$binary" ]; then
  echo "error: the build named no sim test binary" >&2
  exit 1
fi
echo "== seeds $first..$((first + count - 1)), $jobs at a time ($([ "$batch" = 1 ] && echo "one batch process" || echo "one process per seed"))"
start=$(date +%s)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
if [ "$batch" = 1 ]; then
  PUSHGATE_SIM_STATS=1 PUSHGATE_SIM_KEEP_GOING=1 MADSIM_TEST_SEED="$first" MADSIM_TEST_NUM="$count" \
    MADSIM_TEST_JOBS="$jobs" "$binary" --nocapture >"$out" 2>&1 || true
else
  seq "$first" $((first + count - 1)) | xargs -P "$jobs" -I{} sh -c \
    'PUSHGATE_SIM_STATS=1 PUSHGATE_SIM_KEEP_GOING=1 MADSIM_TEST_SEED={} MADSIM_TEST_NUM=1 "$0" --nocapture 2>&1 | grep -E "^SIMSTAT|^seed [0-9]+ (FAILED|fails as known|is listed)|panicked" || true' \
    "$binary" >"$out"
fi
elapsed=$(( $(date +%s) - start ))

# Seeds that crashed (a panic inside the world, not an invariant report) leave no SIMSTAT line.
ran=$(grep -c '^SIMSTAT' "$out" || true)
awk -v elapsed="$elapsed" -v count="$count" '
  /^SIMSTAT/ {
    for (i = 2; i <= NF; i++) {
      split($i, kv, "=")
      key = kv[1]; val = substr($i, length(key) + 2)
      if (key == "status") { st[val]++; if (val == "FAILED") failed = failed " " seed; if (val == "known") kfail++ }
      else if (key == "seed") seed = val
      else if (key == "virtual_ms") vms += val
      else if (key == "pushes") pushes += val
      else if (key == "broadcasts") bc += val
      else if (key == "connections") conns += val
      else if (key == "faults" || key == "statuses" || key == "checks") {
        n = split(val, items, ",")
        for (j = 1; j <= n; j++) { if (items[j] == "") continue; split(items[j], p, "="); agg[key, p[1]] += p[2]; names[key, p[1]] = p[1]; groups[key] = 1 }
      }
    }
  }
  END {
    printf "== pushgate-sim soak summary ==\n"
    printf "seeds run: %d of %d in %d s (%d ok, %d failed, %d failed as known open bugs)\n", st["ok"] + st["FAILED"] + st["known"], count, elapsed, st["ok"], st["FAILED"], st["known"]
    printf "simulated: %d virtual s, %d push requests, %d broadcasts, %d phone connections\n", vms / 1000, pushes, bc, conns
    split("faults statuses checks", order, " ")
    label["faults"] = "faults injected"; label["statuses"] = "pushes by status"; label["checks"] = "invariant checks"
    for (g = 1; g <= 3; g++) {
      line = ""
      for (k in names) { split(k, parts, SUBSEP); if (parts[1] == order[g]) line = line " " parts[2] "=" agg[k] }
      printf "%s:%s\n", label[order[g]], line
    }
    if (failed != "") printf "failed seeds:%s\n", failed
  }' "$out"

status=0
if grep -q '^seed [0-9]* FAILED' "$out"; then
  echo "== failures (replay one with the command shown; add PUSHGATE_SIM_TRACE=1 for the event trace)"
  grep '^seed [0-9]* FAILED' "$out" | sort -n -k2 | cut -c1-400
  status=1
fi
crashed=$((count - ran))
if [ "$crashed" -gt 0 ]; then
  echo "== $crashed seeds ended without a report (a panic inside the world):"
  grep -B2 'panicked' "$out" | head -40
  status=1
fi
if [ "$known" = 1 ]; then
  echo "== entries for sim/src/known.rs (check each bug before pasting)"
  grep '^SIMSTAT.*status=FAILED' "$out" | sed -E 's/^SIMSTAT seed=([0-9]+).*/\1/' | sort -n | while read -r s; do
    v=$(grep -m1 "^seed $s FAILED" "$out" | sed -E 's/.*invariant ([0-9a-z-]+).*/\1/')
    case "$v" in 2-delivered-once) b=B2 ;; *) b=B1 ;; esac
    echo "    ($s, $b), // $v"
  done
fi
if grep -q 'passes now' "$out"; then
  echo "== listed as known failures but passing now:"
  grep 'passes now' "$out" | cut -c1-200
fi
exit "$status"
