#!/usr/bin/env bash
# scripts/gpu-check.sh OUT_DIR: the GPU checks of attnconv in one command (at most ~8 minutes).
#
# On a machine with CUDA it
#   1. runs every test whose name holds "cuda" (the CUDA tests, and the fast paths on the GPU in
#      fp32 and bf16 autocast: tests/test_device_fast_paths.py) -> OUT_DIR/tests.log, tests.xml;
#   2. runs `attnconv bench --device cuda` on the paper-size models (training and inference
#      images/s, training-step peak memory, fast / reference ratios, the layer table, the CPU
#      targets; without the torch.compile row, whose compiling could eat the time budget)
#      -> OUT_DIR/bench.json, bench.md (tables), bench.log;
#   3. writes a one-page OUT_DIR/summary.md (scripts/gpu_summary.py) and environment.json.
# Without CUDA it prints one line, writes nothing and exits 0.
#
# Which Python (printed first): $ATTNCONV_PYTHON if set (it must see CUDA); else the project's
# .venv if its torch sees CUDA; else python3 from PATH if its torch sees CUDA (the user's own
# CUDA build; the pinned CPU wheel of `make setup` cannot use a GPU): a venv .venv-gpu is made
# on top of it (--system-site-packages, so that torch is the user's) and only the missing
# pure-Python requirements are installed there. With a GPU but no venv and no CUDA torch at
# all, `make setup` is tried (PyPI's Linux torch wheel is a CUDA build) and .venv is used if it
# then sees CUDA. The package runs from src/ (PYTHONPATH), no install needed.
# Test hook (tests/scripts/test_gpu_check.py only): ATTNCONV_GPU_CHECK_FAKE_CPU=1 runs every step on the
# CPU with the interpreter that runs the test (ATTNCONV_PYTHON), `bench --tiny`, and the tests
# selected by ATTNCONV_GPU_CHECK_K, to check the script itself on a machine without a GPU.
# Exit status: 0 all passed, 1 a test or the benchmark failed (the summary says which), 2 usage,
# 3 a GPU is here but no interpreter can use it.
set -uo pipefail

if [[ $# -ne 1 || -z "$1" || "$1" == -* ]]; then
    echo "usage: scripts/gpu-check.sh OUT_DIR" >&2
    exit 2
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
case "$1" in /*) OUT=$1 ;; *) OUT=$PWD/$1 ;; esac  # before the cd below
BUDGET_S=${ATTNCONV_GPU_CHECK_BUDGET_S:-470}  # the whole check, seconds
TESTS_S=${ATTNCONV_GPU_CHECK_TESTS_S:-180}     # the tests' share of it
cd "$ROOT" || exit 2
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"

cuda_ok() {  # the interpreter $1 imports torch and sees a CUDA device
    [[ -n "$1" ]] && "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
        >/dev/null 2>&1
}
torch_of() {  # what torch the interpreter $1 has, in words
    "$1" -c 'import torch; print("torch " + torch.__version__)' 2>/dev/null || echo "no torch"
}
gpu_present() {  # an NVIDIA GPU and its driver, whatever Python can do
    { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; } || [[ -e /dev/nvidia0 ]]
}

PY="" NOTE=""
DEVICE=cuda K=cuda BENCH_EXTRA=()
SYS_PY=$(command -v python3 || true)
if [[ -n "${ATTNCONV_GPU_CHECK_FAKE_CPU:-}" && -n "${ATTNCONV_PYTHON:-}" ]]; then
    PY=$ATTNCONV_PYTHON NOTE="test run on the CPU" DEVICE=cpu BENCH_EXTRA=(--tiny)
    K=${ATTNCONV_GPU_CHECK_K:-cuda}
elif [[ -n "${ATTNCONV_PYTHON:-}" ]]; then
    if ! cuda_ok "$ATTNCONV_PYTHON"; then
        echo "gpu-check: ATTNCONV_PYTHON=$ATTNCONV_PYTHON cannot use CUDA ($(torch_of "$ATTNCONV_PYTHON")); point it at a Python whose torch is a CUDA build" >&2
        exit 3
    fi
    PY=$ATTNCONV_PYTHON NOTE="ATTNCONV_PYTHON"
elif cuda_ok "$ROOT/.venv/bin/python"; then
    PY=$ROOT/.venv/bin/python NOTE="the project's .venv"
elif cuda_ok "$SYS_PY"; then
    NOTE="a venv .venv-gpu over $SYS_PY, whose own CUDA torch it uses"
    if [[ ! -x "$ROOT/.venv-gpu/bin/python" ]]; then
        "$SYS_PY" -m venv --system-site-packages "$ROOT/.venv-gpu" || exit 3
    fi
    PY=$ROOT/.venv-gpu/bin/python
    missing=()
    for pair in numpy:numpy safetensors:safetensors yaml:PyYAML matplotlib:matplotlib \
                tqdm:tqdm pytest:pytest hypothesis:hypothesis; do
        "$PY" -c "import ${pair%%:*}" >/dev/null 2>&1 || \
            missing+=("$(grep -i "^${pair#*:}==" requirements.txt || echo "${pair#*:}")")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        echo "gpu-check: installing ${missing[*]} into .venv-gpu" >&2
        "$PY" -m pip install --quiet "${missing[@]}" || {
            echo "gpu-check: could not install ${missing[*]} for $SYS_PY; install them, or set ATTNCONV_PYTHON" >&2
            exit 3; }
    fi
elif gpu_present; then
    if [[ ! -x "$ROOT/.venv/bin/python" ]]; then
        echo "gpu-check: a GPU is here but no Python with a CUDA torch; trying make setup" >&2
        make -C "$ROOT" setup >&2 && cuda_ok "$ROOT/.venv/bin/python" \
            && PY=$ROOT/.venv/bin/python NOTE="the project's .venv, made by make setup"
    fi
    if [[ -z "$PY" ]]; then
        echo "gpu-check: a GPU is here but no Python can use it (.venv: $( [[ -x .venv/bin/python ]] && torch_of .venv/bin/python || echo absent); python3: $( [[ -n "$SYS_PY" ]] && torch_of "$SYS_PY" || echo absent)); install a CUDA build of torch (pytorch.org) for python3 or set ATTNCONV_PYTHON" >&2
        exit 3
    fi
else
    echo "gpu-check: no CUDA on this machine (no NVIDIA GPU or driver; .venv: $( [[ -x .venv/bin/python ]] && torch_of .venv/bin/python || echo absent), torch.cuda.is_available() is False); nothing to check, nothing written"
    exit 0
fi

mkdir -p -- "$OUT" || exit 2
echo "gpu-check: using $PY ($NOTE); results in $OUT"
PY_NOTE="$NOTE" "$PY" - > "$OUT/environment.json" <<'PYTHON'
import datetime, json, os, platform, subprocess, sys
import torch
try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
except (OSError, subprocess.CalledProcessError):
    commit = None
print(json.dumps({
    "python": sys.executable, "python_version": platform.python_version(),
    "interpreter_note": os.environ.get("PY_NOTE"), "torch": torch.__version__,
    "cuda": torch.version.cuda, "gpu_count": torch.cuda.device_count(),
    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)",
    "bf16": torch.cuda.is_bf16_supported() if torch.cuda.is_available() else None,
    "commit": commit, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(" ", "minutes"),
}, indent=2))
PYTHON

echo "gpu-check: tests on the GPU (at most ${TESTS_S} s) -> tests.log"
timeout "$TESTS_S" "$PY" -m pytest -p no:cacheprovider -k "$K" --junitxml "$OUT/tests.xml" \
    --continue-on-collection-errors tests > "$OUT/tests.log" 2>&1  # a module that cannot be
# imported here (a missing optional package) fails alone instead of stopping every test
TESTS_RC=$?
tail -n 1 "$OUT/tests.log"

BENCH_S=$(( BUDGET_S - SECONDS - 10 ))  # SECONDS: since this script started
if [[ $BENCH_S -lt 30 ]]; then
    echo "gpu-check: no time left for the benchmark (${BUDGET_S} s budget spent)" | tee "$OUT/bench.log" >&2
    BENCH_RC=124
else
    echo "gpu-check: attnconv bench --device $DEVICE (at most ${BENCH_S} s) -> bench.json, bench.md"
    timeout "$BENCH_S" "$PY" -m attnconv bench --device "$DEVICE" --no-compile "${BENCH_EXTRA[@]}" \
        --json "$OUT/bench.json" \
        > "$OUT/bench.md" 2> "$OUT/bench.log"
    BENCH_RC=$?
    [[ $BENCH_RC -eq 124 ]] && echo "gpu-check: the benchmark ran out of its ${BENCH_S} s" >&2
fi

"$PY" scripts/gpu_summary.py "$OUT"
echo "gpu-check: tests exit $TESTS_RC, bench exit $BENCH_RC, ${SECONDS} s; see $OUT/summary.md"
[[ $TESTS_RC -eq 0 && $BENCH_RC -eq 0 ]] && exit 0
exit 1
