#!/usr/bin/env bash
# The strategy contract on a GPU machine, every strategy, in one call (issue 13).
#
#   scripts/gpu_check.sh                 # one GPU: ddp, ddp-nccl, fsdp, zero2, zero3 and the three offloads
#                                        # (zero2-offload, zero3-offload, fsdp-offload) on a Qwen2.5-1.5B-shaped model
#   scripts/gpu_check.sh --resume --jobs 8  # ... each job started again resumes to the same adapter; 8 at once
#   scripts/gpu_check.sh --cpu --tiny    # the same flow on CPU with a tiny model (checks the script itself)
#   scripts/gpu_check.sh --speed         # throughput instead: our trainer, bf16, plain and with each GPU option,
#                                        # one line each (scripts/gpu_speed.py; --cpu --tiny: on CPU, in the suite)
#   scripts/gpu_check.sh --wheels DIR ...  # first install the wheels in DIR (a machine without network: fetched
#                                        # beforehand by scripts/gpu_wheels.py, see docs/performance.md) into
#                                        # WORKDIR/site, put first on PYTHONPATH
#
# For each strategy, one process on one GPU (world size 1), started as a pod starts the trainer
# (python -m trainer.train.supervise accelerate launch --config_file <trainer.spec.strategy's config> -m trainer.train),
# on a random Qwen2 model built from Qwen2.5-1.5B's config (no hub): the run succeeds, the adapter holds
# every tensor PEFT makes for the model with the right shapes and every lora_B trained, and base + adapter
# reloaded give the trainer's final eval loss (bf16: within 0.5% relative) and a lower one than the base.
# `ddp-nccl` is ddp forced through accelerate's MULTI_GPU path with one process: torchrun and a real NCCL
# process group, which the trainer's own collectives (row and token counts, checkpoint agreement) then use
# (accelerate adds the DDP wrapper only from two processes on). The logic is tests/strategy_contract.py
# (also used by the CPU test, tests/integration/test_strategies.py); this script runs it per strategy and prints one table:
# strategy, steps, final loss, adapter tensors, trainer / reload / base eval loss, PASS or FAIL.
#
# Needs the repository (this checkout) and a Python with its trainer dependencies (torch with CUDA,
# transformers, accelerate, peft, deepspeed for zero2/zero3, mlflow, ...): $PYTHON, else .venv/bin/python,
# else python3. Exit status: 0 when every strategy passes, 1 when one fails, 2 when it cannot start.
#
# Options: --cpu, --tiny, --resume, --checkpointing (training.gradient_checkpointing: true), --steps N
# (default 10), --only "ddp fsdp", --workdir DIR (default /tmp/kubetune-gpu-check), --timeout S per strategy (default 600), --jobs N: run N strategies
# at once, all on the same GPU (default 1; their seconds then overlap and are not timings).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SPEED=0
WHEELS=""
ARGS=()  # what --speed passes on to scripts/gpu_speed.py
for arg in "$@"; do
  case "$arg" in
    --speed) SPEED=1 ;;
    *) ARGS+=("$arg") ;;
  esac
done
set -- "${ARGS[@]+"${ARGS[@]}"}"
CPU=0
TINY=0
RESUME=0
CHECKPOINTING=0
STEPS=10
ONLY=""
WORKDIR=/tmp/kubetune-gpu-check
TIMEOUT=600
JOBS=1

while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) CPU=1 ;;
    --tiny) TINY=1 ;;
    --resume) RESUME=1 ;;
    --checkpointing) CHECKPOINTING=1 ;;
    --steps) STEPS=$2; shift ;;
    --only) ONLY=$2; shift ;;
    --workdir) WORKDIR=$2; shift ;;
    --timeout) TIMEOUT=$2; shift ;;
    --jobs) JOBS=$2; shift ;;
    --wheels) WHEELS=$2; shift ;;
    --warmup|--batch|--seq|--tokenizer|--save-tokenizer) [ "$SPEED" = 1 ] || { echo "gpu_check: $1 needs --speed" >&2; exit 2; }; shift ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -x "$ROOT/.venv/bin/python" ]; then
  PY=$ROOT/.venv/bin/python
else
  PY=python3
fi

cd "$ROOT" || exit 2
if [ -n "$WHEELS" ]; then  # our pinned packages, carried as wheels to a machine without network
  mkdir -p "$WORKDIR"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$WORKDIR/site" "$WHEELS"/*.whl || exit 2
  export PYTHONPATH="$WORKDIR/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1
# every package the trainer needs is here, at versions that fit each other (else: which wheel to carry), in seconds
"$PY" "$ROOT/scripts/gpu_wheels.py" check || exit 2
# accelerate, torchrun and deepspeed are found next to the interpreter
PATH="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')"):$PATH"
export PATH

if [ "$SPEED" = 1 ]; then  # the options gpu_speed.py reads, as given
  SPEED_ARGS=(--workdir "$WORKDIR/speed" --timeout "$TIMEOUT")
  prev=""
  for arg in "${ARGS[@]+"${ARGS[@]}"}"; do
    case "$prev" in --wheels|--workdir|--timeout|--jobs) prev=""; continue ;; esac
    case "$arg" in
      --wheels|--workdir|--timeout|--jobs) prev=$arg ;;
      --resume|--checkpointing) echo "gpu_check: $arg is for the strategy check, not --speed" >&2; exit 2 ;;
      *) SPEED_ARGS+=("$arg") ;;
    esac
  done
  exec "$PY" "$ROOT/scripts/gpu_speed.py" "${SPEED_ARGS[@]}"
fi

if [ "$CPU" = 1 ]; then
  STRATEGIES=${ONLY:-"ddp fsdp zero2 zero3"}  # fsdp through tests/fixtures/fsdp_on_cpu.py; no NCCL on CPU
  DTYPE=float32
  RUN_ARGS=(--cpu)
else
  STRATEGIES=${ONLY:-"ddp ddp-nccl fsdp zero2 zero3 zero2-offload zero3-offload fsdp-offload"}
  DTYPE=bfloat16
  RUN_ARGS=(--batch 4)
fi
if [ "$TINY" = 1 ]; then SHAPE=tiny; else SHAPE=qwen2.5-1.5b; fi
if [ "$RESUME" = 1 ]; then RUN_ARGS+=(--resume); fi
if [ "$CHECKPOINTING" = 1 ]; then RUN_ARGS+=(--gradient-checkpointing); fi

echo "gpu_check: python $PY, model $SHAPE ($DTYPE), strategies: $STRATEGIES, $STEPS steps, $JOBS at a time, work in $WORKDIR"
"$PY" - "$CPU" <<'EOF' || exit 2
import sys

import torch  # every package is there (scripts/gpu_wheels.py check, above)

print(f"gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"{torch.cuda.device_count()} GPU(s) {[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}")
if sys.argv[1] != "1" and not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA GPU here (use --cpu --tiny to try the script on CPU)")
import trainer.train.loop  # noqa: F401  (the trainer's own dependencies)
EOF

mkdir -p "$WORKDIR"
MODEL=$WORKDIR/model-$SHAPE-$DTYPE
if [ ! -f "$MODEL/config.json" ]; then
  echo "gpu_check: building a random $SHAPE model in $MODEL"
  "$PY" -m tests.strategy_contract build-model --shape "$SHAPE" --dtype "$DTYPE" --out "$MODEL" \
    > "$WORKDIR/build-model.out" 2>&1 || { tail -20 "$WORKDIR/build-model.out"; exit 2; }
fi

SAVE_STEPS=$(( STEPS / 2 > 0 ? STEPS / 2 : 1 ))
check() {
  local strategy=$1 started=$SECONDS code
  rm -f "$WORKDIR/$strategy/result.json"
  timeout --kill-after=30 "$TIMEOUT" "$PY" -m tests.strategy_contract run --strategy "$strategy" \
    --model "$MODEL" --workdir "$WORKDIR/$strategy" --processes 1 --steps "$STEPS" --save-steps "$SAVE_STEPS" \
    --timeout "$TIMEOUT" "${RUN_ARGS[@]}" > "$WORKDIR/$strategy.out" 2>&1
  code=$?
  echo "gpu_check: $strategy exited $code after $(( SECONDS - started ))s (log: $WORKDIR/$strategy/train.log)"
}
for strategy in $STRATEGIES; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
  check "$strategy" &
done
wait
echo
# shellcheck disable=SC2086  # the strategies are words
"$PY" -m tests.strategy_contract table "$WORKDIR" $STRATEGIES
