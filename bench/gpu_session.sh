#!/usr/bin/env bash
# Issue 21's GPU measurements as named steps: bench/gpu_session.sh OUT_DIR [STEP ...]
#
#   bash bench/device_wheels.sh                  # here, once: the packages the device image lacks -> .whl/
#   bash bench/gpu_session.sh "$OUT"             # device call 1 (carry .whl, timeout_s 570): the default steps
#   bash bench/gpu_session.sh "$OUT" compile e2e # call 2, at once while the machine is warm: what time is left for
#
# A session has 15 device minutes, starts included; the first run compiled vHeat-T's train step in 111 s.
# Estimates below are from that: the default steps take about 8 minutes.
#   forms (~1.5 min)      device_suite: bf16 matmul peak, every HCO form and depthwise-conv form at vHeat-T's
#                         stage shapes, forward + backward                          -> OUT/forms.json
#   profile_train (~2.5)  bench/profile_ops.py on the trainer's step, vHeat-T, bf16, batch 128: time and memory
#                         ceiling per part of the model (HCO, dwconv, LayerNorm, MLP, ...) -> OUT/profile_train.json
#   train_variants (~4)   bench/train_step.py, bf16 batch 128: the fused Pallas HCO on every stage ($fused) and
#                         scanned stages; img/s and first-step (compile) seconds    -> OUT/train_variants.jsonl
#   profile_infer (~1.5)  profile_train for the inference form's forward            -> OUT/profile_infer.json
#   profile_fused (~2.5)  profile_train with the fused HCO on every stage           -> OUT/profile_fused.json
#   compile (~2.5)        bench/compile_time.py, vHeat-T bf16 batch 128, cold and from the cache -> OUT/compile.json
#   compile_noautotune    the same under --xla_gpu_autotune_level=0 (compile time against step time)
#                                                                                   -> OUT/compile_noautotune.json
#   e2e (~3)              train.py --config configs/vheat_t.py on 3,072 photo crops, 15 loader workers -> OUT/e2e.log
#   suite (<= 9.3)        bench/device_suite.sh, every section (its own limit, SUITE_TIMEOUT=560 s; the JSON is
#                         written after each section, so what finished comes back) -> OUT/device_suite.json
#
# Every step runs under `timeout` (STEP_TIMEOUT seconds, default 280) so one stuck step leaves the others'
# files; a shared persistent compilation cache lets later steps reuse an identical step's compile.
# BATCH and IMAGE_SIZE (default 128 and 224) shrink the profile and train steps for a dry run on a CPU:
#   BATCH=2 IMAGE_SIZE=64 bash bench/gpu_session.sh /tmp/dry forms profile_train train_variants profile_infer
#   BATCH=4 IMAGE_SIZE=64 PHOTOS=64 WORKERS=2 E2E_STEPS=3 bash bench/gpu_session.sh /tmp/dry e2e
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: bench/gpu_session.sh OUT_DIR [STEP ...]}"
shift
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(forms profile_train train_variants)
mkdir -p "$out"
python="${PYTHON:-python3}"
step_timeout="${STEP_TIMEOUT:-280}"
batch="${BATCH:-128}"
size="${IMAGE_SIZE:-224}"

missing() { ! "$python" -c "import grain, ml_collections, tensorboardX, simplejpeg" 2>/dev/null; }
if missing && compgen -G ".whl/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl/ failed" >&2; exit 1; }
  export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/vheat_jax_cache}"
"$python" -c "import jax; print('jax', jax.__version__, jax.devices())"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,clocks.sm,memory.used --format=csv,noheader

photos="${PHOTOS:-3072}"
fused=fused_separable,fused_separable,fused_kron,fused_kron  # the fused kernels, each where its layout fits
export python out batch size photos fused
run() {  # run NAME COMMAND...: time-limited (a function of this script too), wall time and exit status on one line
  local name=$1 start=$SECONDS
  shift
  if declare -F "$1" >/dev/null; then
    export -f "$1"
    timeout --kill-after=10 "$step_timeout" bash -c '"$@"' bash "$@"
  else
    timeout --kill-after=10 "$step_timeout" "$@"
  fi
  echo "== $name: exit $? after $((SECONDS - start)) s" >&2
}

train_variant() {  # one bench/train_step.py row (vHeat-T, bf16, batch 128) appended to train_variants.jsonl
  "$python" bench/train_step.py --model vheat_tiny --batch "$batch" --image-size "$size" --dtype bfloat16 \
    --steps 10 "$@" \
    | tail -n 1 >>"$out/train_variants.jsonl"
}

write_photos() {  # /tmp/photos/train: the photo crops; /tmp/photos/val: 8 of them per class (the trainer wants a split)
  [ -d /tmp/photos/train ] || "$python" -c "import sys; sys.path.insert(0, 'bench'); from pathlib import Path; \
import input_pipeline; input_pipeline.write_photo_folder(Path('/tmp/photos'), $photos)" || return
  for class_dir in /tmp/photos/train/*/; do
    mkdir -p "/tmp/photos/val/$(basename "$class_dir")"
    find "$class_dir" -name '*.jpg' | sort | head -n 8 | xargs cp -t "/tmp/photos/val/$(basename "$class_dir")"
  done
}

for step in "${steps[@]}"; do
  case "$step" in
    forms) run forms "$python" bench/device_suite.py --out "$out/forms.json" \
        --sections matmul_peak,hco_forms,dwconv_forms ;;
    profile_train|profile_infer) run "$step" "$python" bench/profile_ops.py --what "${step#profile_}" \
        --dtype bfloat16 --batch "$batch" --image-size "$size" --iters 5 --out "$out/$step.json" ;;
    profile_fused) run "$step" "$python" bench/profile_ops.py --what train --hco-form "$fused" \
        --dtype bfloat16 --batch "$batch" --image-size "$size" --iters 5 --out "$out/$step.json" ;;
    train_variants)
      run train_fused train_variant --hco-form "$fused"
      run train_scanned train_variant --scan-blocks ;;
    compile) run compile "$python" bench/compile_time.py --variants vheat_tiny --repeats 1 --dtype bfloat16 \
        --batch "$batch" --stages unrolled --out "$out/compile.json" ;;
    compile_noautotune) run compile_noautotune "$python" bench/compile_time.py --variants vheat_tiny --repeats 1 \
        --dtype bfloat16 --batch "$batch" --stages unrolled --xla-flags=--xla_gpu_autotune_level=0 \
        --out "$out/compile_noautotune.json" ;;
    suite) step_timeout="${SUITE_TIMEOUT:-560}" run suite bash bench/device_suite.sh "$out" ;;
    e2e)
      run photos write_photos
      run e2e "$python" train.py --config configs/vheat_t.py --workdir /tmp/e2e_workdir \
        --config.data_dir=/tmp/photos --config.num_classes=4 --config.global_batch_size="$batch" \
        --config.image_size="$size" --config.num_workers="${WORKERS:-15}" --config.num_steps="${E2E_STEPS:-200}" \
        --config.warmup_steps=10 --config.log_every_steps=20 \
        --config.eval_every_steps=100000 --config.checkpoint_every_steps=100000 >"$out/e2e.log" 2>&1 ;;
    *) echo "unknown step $step: forms profile_train train_variants profile_infer profile_fused compile" \
         "compile_noautotune e2e suite" >&2
       exit 2 ;;
  esac
done
ls -la "$out"
