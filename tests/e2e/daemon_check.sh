#!/usr/bin/env bash
# The squeezed daemon end to end on one backend, with squeezectl as the only client (for hosts
# without the project's Python environment, e.g. a GPU machine; CI runs test_server.py instead):
# start on loopback, register a document, ask its questions greedily DENSE and SQUEEZED (budgets
# 0.125 and 0.5), check what each answer reports (finish, the share of context keys read), send
# bad input, restart (the context must come back from RocksDB and answer the same), stop.
# Prints every answer; exits 1 if any check failed.
#
# Usage: daemon_check.sh SQUEEZED SQUEEZECTL MODEL DOC QUESTIONS_JSON WORKDIR [--set key=value ...]
#   QUESTIONS_JSON: [{"q": prompt, "a": expected answer}, ...] (tests/e2e/fact_document.py makes a
#   document and its questions); WORKDIR is emptied; the --set flags go to squeezed, e.g.
#   --set engine.model.backend=cuda --set engine.model.cuda.dtype=fp32. PORT: a free one unless set.
set -u
SQ=$1 CTL=$2 MODEL=$3 DOC=$4 QS=$5 W=$6
shift 6
PORT=${PORT:-$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")}
C="$CTL --server 127.0.0.1:$PORT"
rm -rf "$W" && mkdir -p "$W"
FAILED=0
fail() { echo "  FAILED: $*"; FAILED=1; }
RUN=0
PID=
trap '[ -n "$PID" ] && kill -9 "$PID" 2>/dev/null' EXIT

start() {
  RUN=$((RUN + 1))
  "$SQ" --set server.listen_address=127.0.0.1:$PORT --set server.metrics_address=127.0.0.1:0 \
    --set engine.model.path="$MODEL" --set storage.path="$W/db" "$@" > "$W/daemon.$RUN.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 240); do
    $C info 2> /dev/null | grep -q "ready yes" && return 0
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.5
  done
  echo "daemon not ready:"
  tail -20 "$W/daemon.$RUN.log"
  exit 1
}
stop() {
  kill -TERM "$PID"
  wait "$PID"
  local rc=$?
  PID=
  [ $rc -eq 0 ] || fail "daemon exit code $rc after SIGTERM"
}
# ask LABEL ARGS...: one greedy generation over the document; sets ANSWER and SHARE (percent).
ask() {
  local label=$1
  shift
  ANSWER=$($C generate --context doc "$@" 2> "$W/err.txt")
  local rc=$?
  SHARE=$(sed -n 's/.*context keys read \([0-9.]*\)%.*/\1/p' "$W/err.txt")
  echo "  [$label] $(echo "$ANSWER" | tr '\n' ' ')| $(tail -1 "$W/err.txt")"
  [ $rc -eq 0 ] || fail "$label: exit code $rc"
}
question() { python3 -c "import json, sys; print(json.load(open(sys.argv[1]))[$1][sys.argv[2]])" "$QS" "$2"; }

start "$@"
$C info 2>&1 | head -2
t0=$(date +%s%N)
$C create doc "$DOC" --wait > "$W/create.txt" 2>&1 || fail "create: $(tail -1 "$W/create.txt")"
echo "$(tail -1 "$W/create.txt") (registered in $((($(date +%s%N) - t0) / 1000000)) ms)"
n=$(python3 -c "import json, sys; print(len(json.load(open(sys.argv[1]))))" "$QS")
declare -A first sq
for i in $(seq 0 $((n - 1))); do
  echo "Q$i: $(question "$i" q) (expected: $(question "$i" a))"
  ask dense "$(question "$i" q)" -n 12 --dense
  first[$i]=$ANSWER
  [ "$SHARE" = "100.0" ] || fail "DENSE read ${SHARE}% of the context, not 100%"
  for b in 0.125 0.5; do
    ask "budget $b" "$(question "$i" q)" -n 12 --budget $b
    [ $b = 0.125 ] && sq[$i]=$ANSWER
    python3 -c "import sys; s = float(sys.argv[1] or 0); sys.exit(0 if $b * 100 <= s < 100 else 1)" \
      "$SHARE" || fail "budget $b read ${SHARE}% of the context"
  done
done

echo "Concurrent: the questions again, all at once (DENSE and budget 0.125 each):"
jobs=()
for i in $(seq 0 $((n - 1))); do
  for mode in "--dense" "--budget 0.125"; do
    # shellcheck disable=SC2086  # mode is two words on purpose
    $C --timeout 120 generate --context doc "$(question "$i" q)" -n 12 $mode \
      > "$W/par.$i.${mode// /}" 2> "$W/par.$i.${mode// /}.err" &
    jobs+=($!)
  done
done
wait "${jobs[@]}"  # the clients only (a bare wait would wait for the daemon too)
same=0
for i in $(seq 0 $((n - 1))); do
  for mode in "--dense" "--budget0.125"; do
    f="$W/par.$i.$mode"
    want=${first[$i]}
    [ "$mode" = "--dense" ] || want=${sq[$i]}
    if grep -q "squeezectl:" "$f.err"; then
      fail "concurrent Q$i $mode: $(grep squeezectl: "$f.err")"
    elif [ "$(cat "$f")" = "$want" ]; then
      same=$((same + 1))
    fi
  done
done
# Answers may differ from the one-at-a-time ones where a batch changes the numerics (bf16 splits
# and selections near ties); errors may not.
echo "  $((2 * n)) requests, no errors; $same of them as the same request asked alone"
metrics=$(sed -n 's|.*metrics on \(http://[^ ]*\).*|\1|p' "$W/daemon.$RUN.log" | tail -1)
if [ -n "$metrics" ]; then
  python3 - "$metrics" "$((5 * n))" <<'PY' || FAILED=1
import sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=10).read().decode()
got = {l.split()[0]: float(l.split()[1]) for l in text.splitlines()
       if l.startswith("sqz_context_keys_read_ratio_") and " " in l}
count, total = got.get("sqz_context_keys_read_ratio_count", 0), got.get("sqz_context_keys_read_ratio_sum", 0)
print(f"  metrics: {count:.0f} requests over a context, mean share of keys read {total / max(count, 1):.3f}")
if count != int(sys.argv[2]) or not 0.2 < total / max(count, 1) < 1.0:
    print(f"  FAILED: sqz_context_keys_read_ratio: want {sys.argv[2]} requests and a mean share in (0.2, 1)")
    sys.exit(1)
PY
else
  fail "no metrics address in the daemon's log"
fi

echo "Bad input:"
$C generate --context doc "x" -n 4 --budget 1.5 > "$W/bad.txt" 2>&1
grep -q INVALID_ARGUMENT "$W/bad.txt" || fail "budget 1.5: $(cat "$W/bad.txt")"
$C create doc "$QS" > "$W/bad.txt" 2>&1
grep -q ALREADY_EXISTS "$W/bad.txt" || fail "same id, other content: $(cat "$W/bad.txt")"
$C generate --context nosuch "x" -n 2 > "$W/bad.txt" 2>&1
grep -q NOT_FOUND "$W/bad.txt" || fail "unknown context: $(cat "$W/bad.txt")"
echo "  budget 1.5, an id taken by other content, an unknown context: checked"

echo "Restart:"
stop
start "$@"
ask "dense, after restart" "$(question 0 q)" -n 12 --dense
[ "$ANSWER" = "${first[0]}" ] || fail "the answer after the restart differs"
stop
grep -E "\] \[(error|critical)\]" "$W"/daemon.*.log && fail "errors in the daemon's log"
[ $FAILED -eq 0 ] && echo "daemon check: all passed" || echo "daemon check: FAILED"
exit $FAILED
