#!/usr/bin/env bash
# One call on a CUDA machine measures everything a GPU is needed for, and prints one table:
#   the `gpu`-marked tests, training it/s and render fps of the renderer (preview table at 96 px, standard
#   table at 512 px, eager and torch.compile'd hash grid) and the compile speed-up of a training step.
#   Budget: under 8 minutes on an H100/H200 (each step has a timeout; the timeouts add up to 7.5 minutes).
# On a machine without CUDA it says so, runs the gpu tests to show they skip, and exits 0.
#
#   bash benchmarks/gpu_check.sh            # from the repository root; PYTHON=... to pick the interpreter
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH="$PWD/backend${PYTHONPATH:+:$PYTHONPATH}"
OUT=$(mktemp -d -t headsync-gpu-check-XXXX)
ROWS="$OUT/rows.tsv"
: > "$ROWS"
row() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$ROWS"; }   # check, result, detail

# step NAME SECONDS CMD...: run with a timeout, keep its output, record failure or timeout as a row
step() {
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
  local rc=$?
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then row "$name" "TIMEOUT" "over ${limit}s"; return 1; fi
  if [ $rc -ne 0 ]; then row "$name" "FAILED (rc $rc)" "$(tail -c 300 "$OUT/$name.err" | tr '\n\t' '  ')"; return 1; fi
  echo "  $name: $((SECONDS - t0)) s" >&2
}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  why=$("$PY" -c "import torch; print(f'torch {torch.__version__}, CUDA build {torch.version.cuda}, no CUDA device visible')" 2>&1)
  echo "gpu_check: skipped, no CUDA device ($why)."
  "$PY" -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tail -n 3
  exit 0
fi

"$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'gpu_check on {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}')"
if "$PY" -c "import tinycudann" 2>/dev/null; then row "tiny-cuda-nn" "installed" ""; else row "tiny-cuda-nn" "not installed" "pure-PyTorch hash grid"; fi

if step gpu_tests 90 "$PY" -m pytest -q -m gpu -p no:cacheprovider -rs tests; then
  row "gpu tests" "$(tail -n 1 "$OUT/gpu_tests.out")" ""
fi

bench() {  # name preset size compile
  if step "$1" 100 "$PY" benchmarks/bench_renderer.py --device cuda --preset "$2" --sizes "$3" --iters 200 --frames 5 --compile "$4"; then
    "$PY" - "$OUT/$1.out" "$1" >> "$ROWS" <<'PYEOF'
import json, sys
r = json.loads(next(l for l in open(sys.argv[1]) if l.startswith("{")))
print(f"{sys.argv[2]}\ttrain {r['train_it_per_s']} it/s, render {r['render_fps']} fps\t"
      f"{r['preset']} table, {r['resolution']} px, {r['rays_per_iter']} rays/iter, compile {r['compile']}")
PYEOF
  fi
}
bench renderer_preview_96 preview 96 off
bench renderer_standard_512_eager standard 512 off
bench renderer_standard_512_compiled standard 512 on

if step compile_step 80 "$PY" benchmarks/bench_train_step.py --what compile --device cuda --preset standard --points 262144 --rounds 20; then
  "$PY" - "$OUT/compile_step.out" >> "$ROWS" <<'PYEOF'
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(f"compile speed-up (training step)\t{r['speedup']}x\teager {r['eager_step_ms']} ms, compiled {r['compiled_step_ms']} ms, "
      f"{r['points']} points, first call {r['first_compiled_call_s']} s")
PYEOF
fi

echo
printf '| %s | %s | %s |\n' check result detail
printf '| --- | --- | --- |\n'
while IFS=$'\t' read -r a b c; do printf '| %s | %s | %s |\n' "$a" "$b" "$c"; done < "$ROWS"
echo
echo "logs: $OUT"
