#!/usr/bin/env bash
# Every GPU figure and the test suite's verdict, in one command on a GPU host:
#
#   make gpu-wheels                  # on a machine with network: wheels a bare CUDA image lacks -> .whl/
#   bash experiments/gpu_check.sh    # on the GPU host, from the repository's root
#
# 1. installs the wheels of $WHEELS (default .whl/, when it holds any) into a private folder
#    (pip --target, no index, no dependencies) and puts it and the repository on PYTHONPATH;
# 2. refuses to go on unless jax's default backend is the GPU (ALLOW_CPU=1: smoke-test on a CPU);
# 3. runs `python -m experiments.benchmark_gpu` (losses, label paths, list API, SupAP at
#    B = 65536, pytorch-metric-learning, evaluation) under BENCH_LIMIT_S, writing into $OUT;
# 4. profiles three training steps at B = PROFILE_B (SupAP with and without the capacity hint,
#    H-AP: `python -m experiments.profile_step`) in PROFILE_S at most: their most expensive
#    device ops, then the optimised HLO of each step, in profile.txt (within TOTAL_S too);
# 5. runs the test suite on the same GPU with what is left of TOTAL_S: the tests not marked slow
#    first, then the slow ones (end-to-end configs, notebooks, multi-device on the host), each
#    stopped by SIGINT at the limit so pytest still writes its JUnit file; adds the counts to
#    the benchmark's JSON ("partial" when a tier was stopped or not reached);
# 6. prints the summary table and the failed tests' names last.
#
# $OUT (default runs/gpu) receives at most 10 files: device.log (the machine), and per phase
# bench: benchmarks_gpu.{md,json}, benchmarks_gpu_rows.json, bench.log; profile: profile.txt;
# tests: tests.xml, tests_slow.xml, tests.log (tests_partial when a tier was stopped). A call
# rewrites only its phases' files, so a second call on the same $OUT keeps the first's, and
# removes its own phases' old ones first. Copy benchmarks_gpu.{md,json} into docs/ to publish. The exit status is the
# benchmark's, or pytest's when that is non-zero (the table is printed either way).
#
# Environment (defaults): PY (python3), OUT (runs/gpu), WHEELS (.whl), TOTAL_S (570),
# TOTAL_S_MAX (570), PHASES ("bench profile tests"), BENCH_LIMIT_S (300), BENCH_ARGS (none;
# e.g. "--sizes 4096 --skip pml"), TESTS (tests), PYTEST_ARGS (none; e.g. "-x"), WORKERS (8),
# PROFILE_S (90), PROFILE_B (4096), ALLOW_CPU (0).
# On a machine lent for a limited time, set TOTAL_S to what the run may take after the machine
# has started (e.g. the time left minus 3 minutes): the script then ends, table printed, before
# it is stopped from outside. It ends within TOTAL_S + 15 s at worst. TOTAL_S above TOTAL_S_MAX
# is cut to it, with a warning: a lent machine stops a command at 600 s (raise TOTAL_S_MAX
# where there is no such limit). The benchmark gets min(BENCH_LIMIT_S, what is left of TOTAL_S
# after the set-up - 30 s), and is not run with less than 60 s; its --budget-s is 40 s below
# that (BENCH_ARGS may set its own).
# One call cannot hold everything in 600 s (the suite alone takes longer): split it by PHASES,
# e.g. "bench profile" in a first call and "tests" in a second on the same warm machine; the
# second prints the test counts, and `python -m experiments.benchmark_gpu --out DIR
# --add-tests DIR/tests.xml,DIR/tests_slow.xml` adds them to the first call's JSON afterwards
# (with the two calls' files copied into DIR).
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
PY=${PY:-python3}
OUT=${OUT:-runs/gpu}
WHEELS=${WHEELS:-.whl}
TOTAL_S=${TOTAL_S:-570}
TOTAL_S_MAX=${TOTAL_S_MAX:-570}
PHASES=${PHASES:-bench profile tests}
BENCH_LIMIT_S=${BENCH_LIMIT_S:-300}
BENCH_ARGS=${BENCH_ARGS:-}
WORKERS=${WORKERS:-8}
PROFILE_S=${PROFILE_S:-90}
PROFILE_B=${PROFILE_B:-4096}
TESTS=${TESTS:-tests}
for name in TOTAL_S TOTAL_S_MAX BENCH_LIMIT_S WORKERS PROFILE_S PROFILE_B; do
  case ${!name} in
    '' | *[!0-9]*) echo "gpu_check: $name must be a whole number, got '${!name}'"; exit 2 ;;
  esac
done
for phase in $PHASES; do
  case $phase in
    bench | profile | tests) ;;
    *) echo "gpu_check: PHASES takes bench, profile and tests, got '$phase'"; exit 2 ;;
  esac
done
has_phase() { case " $PHASES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
if [ "$TOTAL_S" -gt "$TOTAL_S_MAX" ]; then
  echo "gpu_check: warning: TOTAL_S=$TOTAL_S cut to TOTAL_S_MAX=$TOTAL_S_MAX (a lent machine stops a command at 600 s)"
  TOTAL_S=$TOTAL_S_MAX
fi
mkdir -p "$OUT"

if compgen -G "$WHEELS/*.whl" >/dev/null; then
  site=${TMPDIR:-/tmp}/rankax-site
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$WHEELS"/*.whl ||
    echo "gpu_check: warning: installing $WHEELS/*.whl failed; going on with what is installed"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

{
  date -u
  nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not found"
  "$PY" -c "import jax, sys; print(sys.version.split()[0], 'jax', jax.__version__, jax.devices())"
  "$PY" -c "import google.protobuf as p; print('protobuf', p.__version__)" 2>&1 | tail -n 1
} >"$OUT/device.log" 2>&1
cat "$OUT/device.log"
if [ "${ALLOW_CPU:-0}" != 1 ] &&
   ! "$PY" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
  echo "gpu_check: jax sees no GPU (install a CUDA jax, or ALLOW_CPU=1 for a smoke run)"
  exit 2
fi

# The benchmark first: its figures are the run's purpose, and nothing else loads the GPU then.
# No preallocation: its child process (SupAP at B = 65536) and PyTorch share the GPU with it.
# Its limit: what is left of TOTAL_S after the set-up above, less 30 s for the end.
room=$((TOTAL_S - ($(date +%s) - start) - 30))
[ "$BENCH_LIMIT_S" -gt "$room" ] && BENCH_LIMIT_S=$room
bench_rc=0
if has_phase bench && [ "$BENCH_LIMIT_S" -lt 60 ]; then
  echo "gpu_check: ${BENCH_LIMIT_S}s left of TOTAL_S=$TOTAL_S for the benchmark (60 s at least): not run"
  bench_rc=124
elif has_phase bench; then
  # An earlier call's figures must not pass for this one's when it dies before writing any.
  rm -f "$OUT/benchmarks_gpu.md" "$OUT/benchmarks_gpu.json" "$OUT/benchmarks_gpu_rows.json"
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
  timeout -s INT -k 20 "$BENCH_LIMIT_S" env XLA_PYTHON_CLIENT_PREALLOCATE=false \
    "$PY" -m experiments.benchmark_gpu --out "$OUT" --budget-s $((BENCH_LIMIT_S - 40)) $BENCH_ARGS \
    >"$OUT/bench.log" 2>&1
  bench_rc=$?
  tail -n 25 "$OUT/bench.log"
fi

# The profile next: where a ratio above misses its target, the ops to look at.
hlo=$(mktemp)
# Each phase rewrites only its own files: a later call on the same $OUT keeps the others.
has_phase profile && : >"$OUT/profile.txt"
stop=$(( $(date +%s) + PROFILE_S ))
[ "$stop" -gt $((start + TOTAL_S - 20)) ] && stop=$((start + TOTAL_S - 20))  # within TOTAL_S too
for spec in "--loss supap" "--loss supap --no-hint" "--loss hap"; do
  has_phase profile || break
  left=$(( stop - $(date +%s) ))
  if [ "$left" -lt 15 ]; then
    echo "gpu_check: PROFILE_S=$PROFILE_S or TOTAL_S=$TOTAL_S spent before profile_step $spec" >>"$OUT/profile.txt"
    break
  fi
  # shellcheck disable=SC2086  # spec is a list of flags
  timeout -s INT -k 10 "$left" "$PY" -m experiments.profile_step $spec --batch "$PROFILE_B" --top 25 \
    --hlo "$hlo" >>"$OUT/profile.txt" 2>&1 || echo "gpu_check: profile_step $spec: exit $?" >>"$OUT/profile.txt"
done
has_phase profile && cat "$hlo" >>"$OUT/profile.txt"
rm -f "$hlo"

test_rc=0
partial=
run_tier() {  # run_tier MARKER JUNIT: one tier of the suite in the time left
  # 45 s kept back: SIGKILL may follow SIGINT by 30 s, then the counts and the table.
  local left=$((TOTAL_S - ($(date +%s) - start) - 45)) rc workers=()
  if [ "$left" -lt 30 ]; then
    echo "gpu_check: ${left}s left of TOTAL_S=$TOTAL_S, tests '-m $1' not run" | tee -a "$OUT/tests.log"
    partial=--tests-partial
    return
  fi
  echo "gpu_check: tests '-m $1', ${left}s at most" | tee -a "$OUT/tests.log"
  # SIGINT, not SIGKILL, at the limit: pytest then reports what ran and writes the JUnit file.
  # shellcheck disable=SC2086  # PYTEST_ARGS and TESTS are lists
  # pytest-xdist is in the CUDA image; without it (or with WORKERS=0) the tier runs in one process.
  if [ "$WORKERS" -gt 0 ] && "$PY" -c "import xdist" 2>/dev/null; then workers=(-n "$WORKERS"); fi
  timeout -s INT -k 30 "$left" env XLA_PYTHON_CLIENT_PREALLOCATE=false "$PY" -m pytest "${workers[@]}" \
    -q -p no:cacheprovider -m "$1" --junitxml="$2" ${PYTEST_ARGS:-} $TESTS >>"$OUT/tests.log" 2>&1
  rc=$?
  tail -n 2 "$OUT/tests.log"
  case $rc in
    0 | 5) ;;  # 5: no test of this tier among TESTS
    124 | 137) partial=--tests-partial; test_rc=$rc
               echo "gpu_check: tests '-m $1' stopped at ${left}s; counts are partial" ;;
    *) test_rc=$rc ;;
  esac
}
if has_phase tests; then
  # An earlier call's results on the same $OUT must not pass for this one's.
  rm -f "$OUT/tests.xml" "$OUT/tests_slow.xml" "$OUT/tests_partial"
  : >"$OUT/tests.log"
  run_tier "not slow" "$OUT/tests.xml"
  run_tier "slow" "$OUT/tests_slow.xml"
  for xml in "$OUT/tests.xml" "$OUT/tests_slow.xml"; do  # a tier stopped hard writes none
    [ -f "$xml" ] || partial=--tests-partial
  done
  # The JUnit files of a stopped tier look complete: say so in a file that comes back too.
  [ -n "$partial" ] && echo "a test tier was stopped or not reached" >"$OUT/tests_partial"
fi

junits="$OUT/tests.xml,$OUT/tests_slow.xml"
json_there=0
[ -f "$OUT/benchmarks_gpu.json" ] && [ -f "$OUT/benchmarks_gpu_rows.json" ] && json_there=1
if has_phase tests && [ "$json_there" = 1 ]; then  # this call's counts into the benchmark's JSON
  # shellcheck disable=SC2086  # partial is one flag or none
  "$PY" -m experiments.benchmark_gpu --out "$OUT" --add-tests "$junits" $partial
fi
if has_phase bench && [ "$json_there" = 0 ]; then
  echo "gpu_check: the benchmark wrote no JSON (exit $bench_rc); see $OUT/bench.log"
fi
if ! has_phase bench && has_phase tests; then
  "$PY" -c "import sys; from experiments.benchmark_gpu import test_counts; print('tests on this device:', test_counts(sys.argv[1], sys.argv[2] == '1'))" "$junits" "$([ -n "$partial" ] && echo 1 || echo 0)"
fi
has_phase tests && grep -E "^(FAILED|ERROR) " "$OUT/tests.log" | head -n 60
echo "gpu_check: benchmark exit $bench_rc, pytest exit $test_rc, $(($(date +%s) - start)) s"
[ "$bench_rc" -ne 0 ] && exit "$bench_rc"
exit "$test_rc"
