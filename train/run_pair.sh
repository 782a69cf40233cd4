#!/usr/bin/env bash
# Training runs side by side, one per GPU (the multi-GPU machines: the model is small enough that
# one run leaves most of a GPU idle, and each further GPU is one more experiment per call). Each
# run trains its own tokenizer on its task variant (train/tokenizer.py), then train/train.py with
# its own output and checkpoint folders; its log streams to $OUT/NAME.log. Under $OUT
# afterwards, per run: NAME.log and NAME.tar (model.safetensors, config.json, eval.json of the
# export): two files a run, so four runs stay within the eight files a call brings back.
#
# Usage (repository root): bash train/run_pair.sh NAME_A "ARGS_A" [NAME_B "ARGS_B" ...]
#   ARGS: train.py arguments besides --tokenizer, --out and --ckpt-dir; a --task-variant among
#   them is given to tokenizer.py too. GPUS (default "0 1 2 3 4 5 6 7") gives each run its
#   devices in order, WORK (default /tmp/pair) the scratch folder, TIMEOUT (default 560) each
#   run's limit in seconds. A run given several devices ("0,1,2,3") trains on all of them, one
#   data-parallel process each (torchrun; train.py then needs --steps):
#   GPUS="0,1,2,3" bash train/run_pair.sh NAME ARGS.
# Exit status: 0 when every run exported a model, 1 otherwise (its log says why), 2 on bad usage.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT="${OUT:-/tmp/pair-out}"
WORK="${WORK:-/tmp/pair}"
TIMEOUT="${TIMEOUT:-560}"
read -r -a gpus <<< "${GPUS:-0 1 2 3 4 5 6 7}"
if (( $# == 0 || $# % 2 != 0 )); then
  echo "usage: $0 NAME_A \"ARGS_A\" [NAME_B \"ARGS_B\" ...]" >&2
  exit 2
fi
if (( $# / 2 > ${#gpus[@]} )); then
  echo "$0: $(( $# / 2 )) runs but ${#gpus[@]} GPU entries in GPUS=\"${GPUS:-}\"" >&2
  exit 2
fi
mkdir -p "$OUT" "$WORK"

variant_args() {  # the --task-variant of an argument string, for tokenizer.py (none: its default,
  local -a a         # which is train.py's)
  read -r -a a <<< "$1"
  local i
  for ((i = 0; i < ${#a[@]}; ++i)); do
    if [[ "${a[i]}" == --task-variant ]]; then echo "--task-variant ${a[i + 1]:-}"; fi
    if [[ "${a[i]}" == --task-variant=* ]]; then echo "${a[i]}"; fi
  done
}

one() {  # NAME ARGS GPU
  local name="$1" args="$2" gpu="$3" dir="$WORK/$1"
  local -a extra
  read -r -a extra <<< "$args"
  rm -rf "$dir" && mkdir -p "$dir"
  {
    echo "== $name on GPU $gpu: train.py $args"
    local -a launch=(python3)
    local n_gpus
    n_gpus=$(tr ',' '\n' <<< "$gpu" | grep -c .)
    if (( n_gpus > 1 )); then
      launch=(python3 -m torch.distributed.run --standalone --nproc_per_node "$n_gpus")
    fi
    local -a variant
    read -r -a variant <<< "$(variant_args "$args")"
    python3 train/tokenizer.py --out "$dir/tok" "${variant[@]}" &&
      CUDA_VISIBLE_DEVICES="$gpu" PYTHONUNBUFFERED=1 timeout "$TIMEOUT" \
        "${launch[@]}" train/train.py --tokenizer "$dir/tok" --out "$dir/out" \
        --ckpt-dir "$dir/ckpt" "${extra[@]}"
    echo "== $name: exit $?"
  } > "$OUT/$name.log" 2>&1
  local hf="$dir/out/longctx"
  [[ -f "$hf/model.safetensors" ]] || return 1
  cp "$dir/out/eval.json" "$hf/eval.json" 2>/dev/null
  tar -C "$hf" -cf "$OUT/$name.tar" model.safetensors config.json \
    $([[ -f "$hf/eval.json" ]] && echo eval.json)
}

pids=()
k=0
while (( $# > 0 )); do
  one "$1" "$2" "${gpus[k]}" &
  pids+=($!)
  shift 2
  k=$((k + 1))
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
for f in "$OUT"/*.log; do
  echo "---- $(basename "$f")"
  grep -v "^step" "$f" | tail -16
  grep "^step" "$f" | awk 'NR % 25 == 0' | tail -8
done
exit "$status"
