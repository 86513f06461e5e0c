#!/usr/bin/env bash
# The GPU check, as one script (~6-8 minutes on one H100/H200; each step capped, and no step starts
# after GPU_CHECK_DEADLINE seconds), run from a copy of the repository:
#   (a) the speed task on the random-weight LLaMA2-7B shape in fp16 at 4k, 16k, 32k and 64k for every method
#       with attn_implementation=sdpa, and Origin with eager (the paper's baseline) at 4k..16k;
#   (b) one speed row per other model family at 16k (random weights, fp16): Pythia-6.9B (GPT-NeoX,
#       partial rotary), Phi-3-mini-128k (LongRoPE) and MPT-7B (ALiBi), Origin and Mesa each;
#   (c) every method's logits on the device vs the CPU, fp32, prefill and cached decoding
#       (benchmarks/device_parity.py -> $OUT_DIR/parity.csv);
#   (d) the rows collected into $OUT_DIR/all.csv and drawn by `python -m plots`.
#
# On the GPU machine (torch preinstalled; hydra-core, omegaconf and antlr4 from wheels that
# `make gpu-wheels` puts in benchmarks/wheels/, carried along):
#   GPU_CHECK_OUT=results/gpu-h200 bash benchmarks/gpu_check.sh
# End to end on a CPU with small models (what CI-class machines can check):
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_MODEL=llama-30m-random GPU_CHECK_DTYPE=float32 \
#   GPU_CHECK_LENGTHS=[1024,2048] GPU_CHECK_EAGER_LENGTHS=[1024] GPU_CHECK_PARITY_MODEL=tiny-random \
#   GPU_CHECK_PARITY_LENGTH=400 GPU_CHECK_FAMILY_LENGTHS=[256] GPU_CHECK_FAMILIES=pythia-6.9b \
#   GPU_CHECK_FAMILY_ARGS="model.architecture.num_hidden_layers=1" GPU_CHECK_OUT=/tmp/gpu-check \
#   bash benchmarks/gpu_check.sh
# If $OUT is set (the device tool's return folder), the rows also come back as $OUT/<name>.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1

DEVICE=${GPU_CHECK_DEVICE:-cuda}
MODEL=${GPU_CHECK_MODEL:-llama2-7b}
DTYPE=${GPU_CHECK_DTYPE:-float16}
LENGTHS=${GPU_CHECK_LENGTHS:-[4096,16384,32768,65536]}
EAGER_LENGTHS=${GPU_CHECK_EAGER_LENGTHS:-[4096,8192,16384]}
PARITY_MODEL=${GPU_CHECK_PARITY_MODEL:-llama-30m-random}
PARITY_LENGTH=${GPU_CHECK_PARITY_LENGTH:-4096}
OUT_DIR=${GPU_CHECK_OUT:-results/gpu-h100}
FAMILIES=${GPU_CHECK_FAMILIES-pythia-6.9b phi3-mini-128k mpt-7b}  # other architectures, random weights
FAMILY_LENGTHS=${GPU_CHECK_FAMILY_LENGTHS:-[16384]}
FAMILY_METHODS=${GPU_CHECK_FAMILY_METHODS:-origin,mesa}
FAMILY_ARGS=${GPU_CHECK_FAMILY_ARGS:-}  # e.g. a smaller shape for a CPU dry run
# Each step is cut off after this many seconds (rows already written stay), so the whole check
# ends within the device's 10-minute command limit even if one method is far slower than expected.
PARITY_TIMEOUT=${GPU_CHECK_PARITY_TIMEOUT:-60}
JOB_TIMEOUT=${GPU_CHECK_JOB_TIMEOUT:-40}  # per speed job: 9 methods + eager Origin in under 7 minutes
FAMILY_TIMEOUT=${GPU_CHECK_FAMILY_TIMEOUT:-60}  # per family: Origin and Mesa in one process
DEADLINE=${GPU_CHECK_DEADLINE:-480}  # no step starts later than this (seconds), so the whole check fits 10 minutes
WHEELS=${GPU_CHECK_WHEELS:-benchmarks/wheels}

if ! python3 -c "import hydra, omegaconf" 2>/dev/null; then
  ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "error: hydra-core is missing and $WHEELS has no wheels; run make gpu-wheels first" >&2; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-check-site "$WHEELS"/*.whl || exit 2
  export PYTHONPATH=/tmp/gpu-check-site:${PYTHONPATH:-}
fi
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
status=0
started=$SECONDS

in_time() {  # in_time WHAT: whether a step may still start; says so when it may not
  if (( SECONDS - started > DEADLINE )); then echo "   skipped (past the ${DEADLINE} s deadline): $1"; status=1; return 1; fi
}

echo "== (a) speed: $MODEL $DTYPE on $DEVICE, lengths $LENGTHS"
COMMON=(model.random_weights=true device="$DEVICE" dtype="$DTYPE" task=speed task.decode_steps=16
        task.repeats=2 results_dir="$OUT_DIR")
METHODS=${GPU_CHECK_METHODS:-$(python3 -c "from harness.methods import method_names; print(*method_names())")}
for method in $METHODS; do  # every registered method, one job each, lengths ascending
  in_time "$method" || continue
  timeout "$JOB_TIMEOUT" python3 -m harness model="$MODEL" "${COMMON[@]}" method=$method "task.lengths=$LENGTHS" || status=1
  echo "   $method: $((SECONDS - started)) s"
done
if in_time "origin (eager)"; then
  timeout "$JOB_TIMEOUT" python3 -m harness model="$MODEL" "${COMMON[@]}" method=origin model.attn_implementation=eager \
    "task.lengths=$EAGER_LENGTHS"
  [ $? -le 1 ] || status=1  # 1: some lengths failed (out of memory is expected for eager), rows say which
  echo "   origin (eager): $((SECONDS - started)) s"
fi

echo "== (b) other architectures: $FAMILIES at $FAMILY_LENGTHS, methods $FAMILY_METHODS"
for family in $FAMILIES; do
  in_time "$family" || continue
  # shellcheck disable=SC2086  # FAMILY_ARGS is a list of overrides
  timeout "$FAMILY_TIMEOUT" python3 -m harness -m model="$family" "${COMMON[@]}" method="$FAMILY_METHODS" \
    "task.lengths=$FAMILY_LENGTHS" $FAMILY_ARGS || status=1
  echo "   $family: $((SECONDS - started)) s"
done

echo "== (c) logits on $DEVICE vs cpu"
if in_time parity; then
  timeout "$PARITY_TIMEOUT" python3 benchmarks/device_parity.py --device "$DEVICE" --model "$PARITY_MODEL" \
    --length "$PARITY_LENGTH" --out "$OUT_DIR/parity.csv" || status=1
  echo "   $((SECONDS - started)) s"
fi

echo "== (d) collect and draw"
python3 -m harness.collect --results "$OUT_DIR" || status=1
python3 -m plots --results "$OUT_DIR/all.csv" || status=1
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/$(basename "$OUT_DIR").tgz" "$OUT_DIR" && echo "rows packed: \$OUT/$(basename "$OUT_DIR").tgz"
fi
echo "== done in $((SECONDS - started)) s, status $status"
exit $status
