#!/usr/bin/env bash
# Planted bugs: proves which net catches what. Each mutant is a small patch to core or runtime
# that breaks one rule; for each, in a scratch copy of the committed tree (HEAD), the script
# runs the core tests (`cargo test -p pushgate-core`) and SEEDS simulation seeds, and prints
# which net caught it: the core tests that failed, and on how many seeds the simulation failed
# (with the invariants that fired). Seeds that fail on the unmutated tree (the baseline, run
# first) are not counted for any mutant.
#
#   sim/mutants.sh [SEEDS] [FIRST] [--only a,b,...] [--no-core] [--jobs J] [--in-place] [--list]
#
#   SEEDS    simulation seeds per mutant (default 300); FIRST: first seed (default 1)
#   --only   run only these mutants (names as --list prints them)
#   --no-core  skip the core tests (simulation only)
#   --list   print the mutants and exit
#   --in-place  patch this checkout's files (each restored from HEAD after its run, and on exit)
#            and build in its own target/ and target/sim: no cold build of a scratch copy (whose
#            first build recompiles every dependency). The mutated files must equal HEAD.
#
# Scratch: $MUTANTS_DIR (default /tmp/pushgate-mutants): a copy of HEAD's files and two cargo
# target directories (seeded from this checkout's target/ and target/sim on the first run, so
# only the workspace crates are rebuilt per mutant). The checkout itself is never modified.
# Output: one table row per mutant, and the table in $MUTANTS_DIR/score.md.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

seeds=300
first=1
only=""
core=1
jobs=2
list=0
in_place=0
positional=()
while [ $# -gt 0 ]; do
  case "$1" in
    --only) only="$2"; shift 2 ;;
    --no-core) core=0; shift ;;
    --jobs) jobs="$2"; shift 2 ;;
    --list) list=1; shift ;;
    --in-place) in_place=1; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) positional+=("$1"); shift ;;
  esac
done
[ ${#positional[@]} -ge 1 ] && seeds="${positional[0]}"
[ ${#positional[@]} -ge 2 ] && first="${positional[1]}"

scratch="${MUTANTS_DIR:-/tmp/pushgate-mutants}"
src="$scratch/src"
mkdir -p "$scratch"

# ---- the mutants: name, what it breaks, and (file, old, new) replacements (exact, once) ----
mutants_py="$scratch/mutants.py"
cat >"$mutants_py" <<'PY'
import json, sys
M = [
 ("stale-route-cleanup", "a store route naming this node with no local connection is not marked offline",
  [("core/src/node/single.rs", "let Some(conn_id) = route.conn_id.as_deref() else {", "let Some(conn_id) = route.conn_id.as_deref().filter(|_| false) else {")]),
 ("offline-vs-router-change", "a stale route naming the answering node answers router-change instead of offline",
  [("core/src/node/single.rs", """                    self.finish_single(id, PushStatus::Offline, None);
                } else {""", """                    self.finish_single(id, PushStatus::RouterChange, None);
                } else {""")]),
 ("offline-marked-route", "a route marked offline is treated as online",
  [("core/src/node/single.rs", "Ok(StoreReply::Route(Some((route_type, route)))) if route.is_online() => {",
    "Ok(StoreReply::Route(Some((route_type, route)))) if route.is_online() || route.port != 0 => {")]),
 ("writable-check", "a single push is sent into a queue over its high-water mark",
  [("core/src/node/single.rs", "if !session.writable {", "if !session.writable && session.heartbeat_ms == u64::MAX {")]),
 ("writable-stuck", "a phone once over its mark is never writable again (pushes fail 'not writable')",
  [("core/src/node/mod.rs", "session.writable = writable;", "session.writable &= writable;")]),
 ("flow-limit", "flow control lets one send too many through per window",
  [("core/src/flow.rs", "self.in_window >= self.limit_per_window", "self.in_window > self.limit_per_window")]),
 ("kick-connection-check", "a kick notice kicks whichever connection holds the user, not the one it names (neither connection nor binding checked)",
  [("core/src/node/phone.rs", "s.conn_token == notice.conn_id", "(s.conn_token == notice.conn_id || !notice.user_id.is_empty())"),
   ("core/src/node/phone.rs", "(notice.version == 0", "(notice.version != u64::MAX")]),
 ("kick-version-check", "a kick notice kicks a binding newer than the one it names",
  [("core/src/node/phone.rs", "(notice.version == 0", "(notice.version != u64::MAX")]),
 ("broadcast-once", "a broadcast paused by flow control can reach a connection twice",
  [("core/src/node/broadcast.rs", "let wanted = !task.reached.contains(&entry.conn)", "let wanted = true")]),
 ("push-deadline", "a push waiting for flow control outlives its deadline and is sent after it",
  [("core/src/node/single.rs", "if now >= task.deadline_ms {", "if now >= task.deadline_ms + 10_000 {"),
   ("core/src/node/single.rs", """        let reason = match task.state {""", """        if task.step_at_ms.is_some() {
            return;
        }
        let reason = match task.state {""")]),
 ("route-versions", "a late route write of an older bind overwrites a newer one",
  [("core/src/store.rs", """            self.version >= stored.version
        }""", """            self.version >= stored.version || stored.port != 0
        }""")]),
 ("ack-race", "a push asking for an ACK is answered ack-success once written, before any ACK",
  [("core/src/node/single.rs", """                    task.timeline.add("waiting-ack", epoch);""", """                    task.timeline.add("waiting-ack", epoch);
                    self.finish_single(id, PushStatus::AckSuccess, None);""")]),
 ("router-change-while-local", "a user who bound here while the store was asked is not delivered locally",
  [("core/src/node/single.rs", "if self.local_route(user_id, client_type).is_some() {", "if self.local_route(user_id, client_type).is_some() && user_id.is_empty() {")]),
 ("late-bind-answer", "a bind's route write answered after its timeout is ignored (the connection it displaced is never kicked)",
  [("core/src/node/mod.rs", "if holds_user && reply.is_ok() {", "if holds_user && reply.is_ok() && request.0 == 0 {")]),
 ("device-move-skew", "a device's offline route on a node whose clock is ahead keeps the device's next connection out (its bind is answered, then kicked as late)",
  [("core/src/store.rs", "!stored.is_online() || !self.is_older_connection_than(stored)", "!self.is_older_connection_than(stored)")]),
 ("gateway-margin", "the PushClient gives the gateway all but 30 ms of its timeout: no room for a gateway whose clock runs slow",
  [("runtime/src/client/push.rs", "        timeout_ms - 500\n", "        timeout_ms - 30\n")]),
 ("wall-clock-not-followed", "the node never re-reads the wall clock: its versions drift with its monotonic clock for the whole run",
  [("runtime/src/driver.rs", "self.node.follow_wall_clock(self.now, epoch_ms);", "let _ = epoch_ms;")]),
 ("no-type-stale-first", "a push naming no client type reads the first online route, even a stale one of the asking node, while the user is online elsewhere",
  [("core/src/store.rs", "(true, false) => 0,\n            (true, true) => 1,", "(true, _) => 0,")]),
 ("late-answer-dropped", "a push route answer that comes after its push ended or its read timed out is not checked for a stale route of this node",
  [("core/src/node/mod.rs", "if let Some(user_id) = self.late_route_reads.remove(&request) {", "if let Some(user_id) = self.late_route_reads.remove(&request).filter(|_| false) {")]),
 ("dead-bind-write-left-online", "a bind write that lands after its bind ended (a late answer) is left online",
  [("core/src/node/mod.rs", "                    if let Some(conn_id) = route.conn_id {", "                    if let Some(conn_id) = route.conn_id.filter(|_| false) {")]),
 ("rebind-leaves-old-bind", "a re-bind of the same user does not mark the bind it ends: a late write of that bind (its answer lost) lands online",
  [("core/src/node/bind.rs", "if let (Some(version), Some(conn_id)) = (ended_version, record.conn_id.clone()) {", "if let (Some(version), Some(conn_id)) = (ended_version.filter(|_| false), record.conn_id.clone()) {")]),
 ("ended-newer-bind-kicks", "a bind refused as stale against a newer bind that has ended is kicked instead of binding again above it (B21)",
  [("core/src/node/bind.rs", "                    && attempts <= STORE_WRITE_ATTEMPTS\n", "                    && attempts <= STORE_WRITE_ATTEMPTS\n                    && false\n")]),
 ("restamp-at-clock", "a bind re-stamped above an ended bind takes the clock's version and displaces a bind made after the ended one (B23)",
  [("core/src/node/bind.rs", "let route_version = self.version_just_above(ended_version);", "let route_version = { let _ = ended_version; self.next_version() };")]),
 ("ended-marks-one-list", "a route's ended binds are one list of four, so another node's binds push a node's mark out (B24)",
  [("core/src/store.rs", "        if of_node >= MAX_ENDED_BINDS_PER_NODE {\n", "        if of_node >= MAX_ENDED_BINDS_PER_NODE && false {\n"),
   ("core/src/store.rs", "        } else if self.ended.len() >= MAX_ENDED_BINDS {\n", "        } else if self.ended.len() >= MAX_ENDED_BINDS_PER_NODE {\n")]),
 ("late-write-clock-ahead", "across nodes, a route write whose connection age reads newer by any amount displaces the device's live route (B26)",
  [("core/src/store.rs", "            && self.conn_version\n                < stored\n                    .conn_version\n                    .saturating_add(self.age_margin_us(stored))\n", "            && self.conn_version < stored.conn_version\n")]),
 ("restore-despite-newer-bind-here", "a bind that lost its user to a newer bind on its node restores the route it displaced elsewhere instead of kicking it (B28)",
  [("core/src/node/bind.rs", "&& !self.newer_bind_here(user_id, *client_type, &previous)", "&& !(false && self.newer_bind_here(user_id, *client_type, &previous))")]),
 ("link-fence-off", "a route op sent on a store link its node has replaced lands after the ops of the new link (B27)",
  [("core/src/store_state.rs", ".and_then(|route| route.fence_of(node, link_epoch));", ".and_then(|route| route.fence_of(node, link_epoch)).filter(|_| false);")]),
 ("fast-connect-ok-before-session", "FAST_CONNECT-ok is queued before the connection takes on the session (the churn soak's ERROR 100)",
  [("core/src/node/fast_connect.rs", """        self.outputs.push_back(Output::Resume {
            conn,
            resume: Box::new(resume),
        });
        self.send_raw(conn, Command::FastConnect, packet_session_id, &ok);""", """        self.send_raw(conn, Command::FastConnect, packet_session_id, &ok);
        self.outputs.push_back(Output::Resume {
            conn,
            resume: Box::new(resume),
        });""")]),
 ("slow-reader-stalls-sends", "while any phone of the node is over its high-water mark, single pushes to the others wait a flow window",
  [("core/src/node/single.rs", "        match self.global_flow.check(now) {", """        let any_full = self.sessions.values().any(|s| !s.writable);
        match if any_full { FlowDecision::RetryInMs(1_000) } else { self.global_flow.check(now) } {""")]),
]
cmd = sys.argv[1]
if cmd == "list":
    for name, what, _ in M:
        print(f"{name}\t{what}")
elif cmd == "files":
    print("\n".join(sorted({f for _, _, ps in M for f, _, _ in ps})))
elif cmd == "apply":
    name, root = sys.argv[2], sys.argv[3]
    (_, _, patches), = [m for m in M if m[0] == name]
    for f, old, new in patches:
        path = f"{root}/{f}"
        text = open(path).read()
        if text.count(old) != 1:
            sys.exit(f"mutant {name}: the text to replace occurs {text.count(old)} times in {f}")
        open(path, "w").write(text.replace(old, new))
PY

if [ "$list" = 1 ]; then python3 "$mutants_py" list; exit 0; fi

target_debug="$scratch/target-debug"
target_sim="$scratch/target-sim"
if [ "$in_place" = 1 ]; then
  src="$repo"
  target_debug="$repo/target"
  target_sim="$repo/target/sim"
  for f in $(python3 "$mutants_py" files); do
    git -C "$repo" diff --quiet HEAD -- "$f" || { echo "error: $f differs from HEAD; commit or stash it first" >&2; exit 1; }
  done
  trap 'for f in $(python3 "$mutants_py" files); do git -C "$repo" show "HEAD:$f" >"$repo/$f"; done' EXIT
  echo "== patching this checkout in place (HEAD $(git -C "$repo" rev-parse --short HEAD))"
else
  echo "== scratch copy of HEAD ($(git -C "$repo" rev-parse --short HEAD)) in $scratch"
  rm -rf "$src"
  mkdir -p "$src"
  git -C "$repo" archive HEAD | tar -x -C "$src"
fi

# The core's test vectors live beside the repository (`../shared/vectors`).
if [ "$in_place" = 0 ] && [ -d "$repo/../shared" ] && [ ! -e "$scratch/shared" ]; then ln -s "$(cd "$repo/../shared" && pwd)" "$scratch/shared"; fi

restore() { for f in $(python3 "$mutants_py" files); do git -C "$repo" show "HEAD:$f" >"$src/$f"; done; }

# Core tests that fail on the unmutated tree (not counted for any mutant).
base_core=""

# Runs the core tests; prints "0", "n (names)" or "no build".
run_core() {
  [ "$core" = 1 ] || { echo "-"; return; }
  local out
  out=$(cd "$src" && CARGO_TARGET_DIR="$target_debug" cargo test -p pushgate-core --no-fail-fast 2>&1) && { echo "0"; return; }
  if ! grep -q '^test result' <<<"$out"; then echo "no build"; return; fi
  local failed
  failed=$(grep -E '^test .* \.\.\. FAILED$' <<<"$out" | sed -E 's/^test (.*) \.\.\. FAILED$/\1/' | sort -u)
  for t in $base_core; do failed=$(grep -vx -- "$t" <<<"$failed" || true); done
  [ -z "$failed" ] && { echo "0"; return; }
  echo "$(grep -c . <<<"$failed") ($(tr '\n' ' ' <<<"$failed" | sed 's/ $//'))"
}

# Builds the simulation and runs the seeds; writes "seed invariant..." lines of failing seeds.
run_sim() {
  local out="$1" binary
  binary=$(cd "$src" && RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR="$target_sim" \
    cargo test -p pushgate-sim --test sim --no-run 2>&1 | sed -n 's/.*Executable tests\/sim.rs (\(.*\))/\1/p' | tail -1)
  if [ -z "$binary" ]; then echo "no build" >"$out"; return; fi
  case "$binary" in /*) ;; *) binary="$src/$binary" ;; esac
  seq "$first" $((first + seeds - 1)) | xargs -P "$jobs" -I{} sh -c \
    'o=$(PUSHGATE_SIM_IGNORE_KNOWN=1 MADSIM_TEST_SEED={} MADSIM_TEST_NUM=1 timeout 120 "$0" --nocapture 2>&1) && exit 0
     inv=$(printf "%s\n" "$o" | grep -oE "^  - invariant [0-9a-z-]+" | sed "s/^  - invariant //" | sort -u | tr "\n" " ")
     [ -z "$inv" ] && inv="panic"
     echo "{} $inv"' "$binary" >"$out" || true
}

# Summarises a failures file against the baseline: "k/N (invariant×count ...)".
sim_score() {
  local file="$1" base="$2"
  if grep -q '^no build' "$file"; then echo "no build"; return; fi
  awk -v n="$seeds" -v base="$base" '
    BEGIN { while ((getline line < base) > 0) { split(line, f, " "); skip[f[1]] = 1 } }
    { if ($1 in skip) next; caught++; for (i = 2; i <= NF; i++) inv[$i]++ }
    END {
      s = ""; for (k in inv) s = s (s == "" ? "" : ", ") k "×" inv[k]
      printf "%d/%d%s\n", caught, n, (s == "" ? "" : " (" s ")")
    }' "$file"
}

score="$scratch/score.md"
{
  echo "| planted bug | what it breaks | core tests failed | sim seeds caught (invariants) |"
  echo "|---|---|---|---|"
} >"$score"

echo "== baseline (no mutation): core tests and $seeds seeds from $first"
restore
base_result=$(run_core)
echo "   baseline core tests failed (not counted): $base_result"
base_core=$(sed -n 's/^[0-9]* (\(.*\))$/\1/p' <<<"$base_result")
run_sim "$scratch/baseline.txt"
base_fail=$(wc -l <"$scratch/baseline.txt")
echo "   baseline: $base_fail seeds fail without any mutation (not counted): $(cut -d' ' -f1 "$scratch/baseline.txt" | tr '\n' ' ')"

python3 "$mutants_py" list | while IFS=$'\t' read -r name what; do
  if [ -n "$only" ] && ! grep -qw -- "$name" <<<"${only//,/ }"; then continue; fi
  restore
  if ! python3 "$mutants_py" apply "$name" "$src"; then
    echo "| $name | $what | (patch does not apply) | |" | tee -a "$score"
    continue
  fi
  echo "== $name: $what"
  core_result=$(run_core)
  run_sim "$scratch/$name.txt"
  sim_result=$(sim_score "$scratch/$name.txt" "$scratch/baseline.txt")
  echo "| $name | $what | $core_result | $sim_result |" | tee -a "$score"
done
restore
echo "== score table: $score"
cat "$score"
