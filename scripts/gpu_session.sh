#!/usr/bin/env bash
# Issue 18's GPU session in one command: the core benchmark at three
# precisions, the 1,000-vs-5 claim, loss of plasticity at scale and the
# whole-sweep section, each part under its own time limit so that the whole
# ends inside one 10-minute device command. docs/benchmarks.md, "On a GPU".
#
# 1. Once, on a machine with a package registry, in the repository's root
#    (the GPU machine has Python 3.12 and no network; the first two wheels
#    are pure Python, and their dependencies -- absl-py, PyYAML, numpy, scipy,
#    matplotlib, requests -- are on it already; google-crc32c, a C extension
#    without dependencies, only makes TensorBoard's writing faster, and
#    deadjax runs without it):
#
#      python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#          --implementation cp --platform manylinux_2_28_x86_64 \
#          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#          -d .whl ml-collections==1.1.0 mnist1d==0.0.2.post1 google-crc32c==1.9.0
#
#    (.whl/ is git-ignored; it travels when the run names it in carry.)
#
# 2. On the GPU, through the device tool: run with
#      command:   bash scripts/gpu_session.sh
#      carry:     [".whl"]
#      timeout_s: 600
#    Everything comes back under $OUT (7 files): session.log, core.md,
#    claim.md, sweep.md, plasticity_gpu/summary.json, plasticity_gpu/permuted.png,
#    extras.tar.gz (the sections' numbers as JSON, the environment, the
#    plasticity run's results table, profiler traces where deadjax is below
#    0.95 of the hand-written program).
#
#    Or in two calls (the machine stays warm 30 s between them):
#      bash scripts/gpu_session.sh core claim          (about 5 minutes)
#      bash scripts/gpu_session.sh plasticity sweep    (about 4 minutes)
#
# 3. On a CPU, the same pipeline at toy sizes (about 6-7 minutes on 2 busy cores):
#      PYTHON=.venv/bin/python bash scripts/gpu_session.sh --tiny
#
# Parts run in the order given (default: core claim plasticity sweep). Each
# has a budget in seconds (below; PART_BUDGET=... overrides, e.g.
# CORE_BUDGET=150), passed to the part as its own soft limit and enforced
# with `timeout`; the last part gets whatever is left. The session keeps a
# total deadline (DEADLINE, default 570 s from the start) and skips a part
# that has less than 30 s left. A part that fails or times out does not stop
# the others; its log says what happened.
set -u
START=$(date +%s)
cd "$(dirname "$0")/.."
REPO=$(pwd)
ARGS="$*"
TINY=0
PARTS=()
for a in "$@"; do
  case "$a" in
    --tiny) TINY=1 ;;
    core|claim|plasticity|sweep) PARTS+=("$a") ;;
    -h|--help) sed -n '2,45p' "$0"; exit 0 ;;
    *) echo "gpu_session.sh: unknown argument $a (parts: core claim plasticity sweep; --tiny)" >&2; exit 2 ;;
  esac
done
[ ${#PARTS[@]} -eq 0 ] && PARTS=(core claim plasticity sweep)

OUT=${OUT:-/tmp/deadjax_gpu_session}
WORK=${WORK:-/tmp/deadjax_gpu_work}
mkdir -p "$OUT" "$WORK"
PY=${PYTHON:-python3}
DEADLINE=${DEADLINE:-570}
export PYTHONUNBUFFERED=1
LOG="$OUT/session.log"

elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "[gpu_session +$(elapsed)s] $*"; }

main() {
# ---- setup: the carried wheels, the repository on PYTHONPATH, the machine
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || { say "wheel install failed"; return 1; }
  export PYTHONPATH="$REPO:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi
ENV_TXT="$WORK/env.txt"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
       "$(git -C "$REPO" status --porcelain 2>/dev/null | grep -q . && echo '(with local changes)')"
  echo "command: scripts/gpu_session.sh $ARGS"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  "$PY" - <<'EOF'
import importlib, os, platform, sys
print("python", platform.python_version(), sys.executable, "cpus", os.cpu_count())
for name in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "ml_collections",
             "mnist1d", "numpy", "pandas", "pyarrow", "tensorboard"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "?"))
    except Exception as e:
        print(name, "MISSING:", type(e).__name__, e)
import jax
print("devices", jax.devices())
EOF
} > "$ENV_TXT" 2>&1
cat "$ENV_TXT"
if [ $TINY = 1 ]; then DEVICE=cpu; else DEVICE=gpu; fi
"$PY" -c "import jax, sys; sys.exit(0 if jax.devices()[0].platform == '$DEVICE' else 1)" \
  || { say "JAX's first device is not a $DEVICE (see above); stopping"; return 1; }

# The plasticity run's data (MNIST-1D at MNIST's size, ~15-30 s of one CPU
# core) are made in the background while the GPU runs the benchmarks.
PLAST_WORK="$WORK/plasticity_gpu"
QUICK=""; [ $TINY = 1 ] && QUICK=--quick
JAX_PLATFORMS=cpu "$PY" -m deadjax.reproductions.plasticity_gpu --make-data "$PLAST_WORK/data" \
  $QUICK > "$WORK/make_data.log" 2>&1 &
DATA_PID=$!

# ---- the parts: budgets (seconds) and arguments, GPU and tiny
if [ $TINY = 1 ]; then
  : "${CORE_BUDGET:=150}" "${CLAIM_BUDGET:=180}" "${PLASTICITY_BUDGET:=120}" "${SWEEP_BUDGET:=150}"
  DEADLINE=${DEADLINE_TINY:-900}
  CORE_ARGS=(--device cpu --populations 1,2 --steps 10 --repeats 1 --loop-members 1
             --matmul-size 256 --trace-below 2)
  CLAIM_ARGS=(--device cpu --claim-members 4 --claim-singles 2 --claim-steps 10 --claim-repeats 1)
  SWEEP_ARGS=(--device cpu --sweep-scale 64 --repeats 1)
else
  : "${CORE_BUDGET:=170}" "${CLAIM_BUDGET:=140}" "${PLASTICITY_BUDGET:=150}" "${SWEEP_BUDGET:=100}"
  # the populations that matter most first: a spent budget skips the last ones
  CORE_ARGS=(--device gpu --repeats 3 --populations 1,64,1024,4096,4,16,256)
  CLAIM_ARGS=(--device gpu --claim-repeats 3)
  SWEEP_ARGS=(--device gpu --repeats 1)
fi

left() { echo $(( DEADLINE - $(elapsed) )); }
limit() {  # the part's seconds: its budget, or what the deadline leaves (the
           # last part of the session gets all that is left)
  local b=$1 l; l=$(( $(left) - 5 ))
  [ "$LAST" = 1 ] && { echo "$l"; return; }
  [ "$b" -lt "$l" ] && echo "$b" || echo "$l"
}

run_core() {
  local t; t=$(limit "$CORE_BUDGET")
  timeout -k 10 "$t" "$PY" scripts/benchmark.py --only core "${CORE_ARGS[@]}" \
    --precisions highest,tf32,bf16 --core-budget $(( t - 15 )) \
    --trace-dir "$WORK/traces" --json "$WORK/core.json" > "$OUT/core.md"
}
run_claim() {
  local t; t=$(limit "$CLAIM_BUDGET")
  timeout -k 10 "$t" "$PY" scripts/benchmark.py --only claim "${CLAIM_ARGS[@]}" \
    --claim-budget $(( t * 2 / 3 )) --json "$WORK/claim.json" > "$OUT/claim.md"
}
run_plasticity() {
  local t; t=$(limit "$PLASTICITY_BUDGET")
  wait "$DATA_PID" 2>/dev/null; cat "$WORK/make_data.log"
  # training gets all but ~40 s (start-up, analysis, figure)
  timeout -k 10 "$t" "$PY" scripts/reproduce.py plasticity_gpu $QUICK \
    --workdir "$PLAST_WORK" --figures "$OUT/plasticity_gpu" --time-budget $(( t - 40 ))
}
run_sweep() {
  local t; t=$(limit "$SWEEP_BUDGET")
  timeout -k 10 "$t" "$PY" scripts/benchmark.py --only sweep "${SWEEP_ARGS[@]}" \
    --sweeps mnist1d1024,mnist60k --sweep-budget $(( t - 25 )) \
    --json "$WORK/sweep.json" > "$OUT/sweep.md"
}

STATUS=()
LAST=0
for i in "${!PARTS[@]}"; do
  part=${PARTS[$i]}
  [ "$i" -eq $(( ${#PARTS[@]} - 1 )) ] && LAST=1
  if [ "$(left)" -lt 30 ]; then
    say "$part skipped: $(left) s left of the ${DEADLINE} s deadline"
    STATUS+=("$part: skipped"); continue
  fi
  say "== $part (budget $(eval echo \$${part^^}_BUDGET) s, $(left) s left) =="
  t0=$(date +%s)
  "run_$part"
  rc=$?
  case $rc in
    0) what=ok ;; 124|137) what="stopped at its time limit" ;; 1) what="exit 1 (for plasticity: a check failed)" ;; *) what="exit $rc" ;;
  esac
  say "== $part: $what in $(( $(date +%s) - t0 )) s =="
  STATUS+=("$part: $what in $(( $(date +%s) - t0 )) s")
  [ -f "$OUT/$part.md" ] && { echo "----- $OUT/$part.md -----"; cat "$OUT/$part.md"; }
done
kill "$DATA_PID" 2>/dev/null

# ---- what comes back: at most 8 files, 2 folders deep
EXTRAS="$WORK/extras"
rm -rf "$EXTRAS"; mkdir -p "$EXTRAS"
cp "$ENV_TXT" "$WORK"/*.json "$EXTRAS"/ 2>/dev/null
if [ -d "$PLAST_WORK" ]; then
  mkdir -p "$EXTRAS/plasticity_gpu"
  for sub in "$PLAST_WORK"/plasticity_gpu*; do
    [ -d "$sub" ] || continue
    name=$(basename "$sub")
    mkdir -p "$EXTRAS/plasticity_gpu/$name"
    cp -r "$sub"/config.json "$sub"/points.jsonl "$sub"/results* "$EXTRAS/plasticity_gpu/$name"/ 2>/dev/null
  done
fi
if [ -d "$WORK/traces" ] && [ "$(du -sm "$WORK/traces" | cut -f1)" -lt 10 ]; then
  mkdir -p "$EXTRAS/traces"
  (cd "$WORK/traces" && find . -name 'perfetto_trace.json.gz' -exec cp --parents {} "$EXTRAS/traces/" \;)
fi
tar -czf "$OUT/extras.tar.gz" -C "$EXTRAS" .
if [ "$(du -m "$OUT/extras.tar.gz" | cut -f1)" -ge 15 ]; then  # over the 16 MB a file may have
  rm -rf "$EXTRAS/traces" "$EXTRAS/plasticity_gpu"
  tar -czf "$OUT/extras.tar.gz" -C "$EXTRAS" .
  say "extras.tar.gz too big: traces and the plasticity table left out"
fi
say "done in $(elapsed) s:"
for s in "${STATUS[@]}"; do echo "  $s"; done
find "$OUT" -type f | sort | while read -r f; do echo "  $f ($(du -k "$f" | cut -f1) KB)"; done
}

set -o pipefail
main 2>&1 | tee -a "$LOG"
exit "${PIPESTATUS[0]}"
