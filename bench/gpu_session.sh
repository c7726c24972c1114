#!/bin/bash
# The GPU benchmarks of issues #14 and #15, in two calls of at most 10 minutes each on one H100/H200:
#   bash zoo/gpu_stage.sh WHEELDIR      # here: copy this code (+ wheels) to /work/main/.scratch/gpu
#   run(command="cd .scratch/gpu && bash bench/gpu_session.sh inference", carry=[".scratch/gpu"])
#   run(command="cd .scratch/gpu && bash bench/gpu_session.sh build", carry=[".scratch/gpu"])
# Results (JSON + logs) go to $OUT; copy them to bench/results/gpu/.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import sys, torch, transformers, accelerate, pydantic, pearzoo.build; print(sys.version.split()[0], torch.__version__, transformers.__version__, accelerate.__version__, torch.cuda.get_device_name())" || exit 1
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv,noheader
log() { grep -v "Loading weights\|Writing model\|^ \|^{\|^}\|^\]" "$1" | tail -n "${2:-4}"; }
case "$1" in
inference)  # #14.3: original / patched / hooked, 1B- and 7B-class shapes, bf16, prefill + decode, A/A control
  for s in llama-1b:15 llama-7b:10; do
    n=${s%%:*}; r=${s##*:}
    timeout 330 python3 bench/inference.py --shape $n --device cuda --dtype bfloat16 --batch 8 --prompt-len 512 \
      --new-tokens 64 --rounds $r --warmup 2 --workdir /tmp --out $OUT/inference_${n}_bf16.json > $OUT/inference_${n}.log 2>&1
    echo "rc=$? $n"; log $OUT/inference_${n}.log 2
  done ;;
build)  # #15.4: pearzoo build end to end, 7B shape, cold page cache; #14.2: single-device vs max_memory split
  timeout 200 python3 bench/build_e2e.py --shape llama-7b --device cuda --dtype bfloat16 --drop-caches --workdir /tmp \
    --out $OUT/build_e2e_llama-7b_bf16.json > $OUT/build_e2e.log 2>&1
  echo "rc=$? build_e2e"; log $OUT/build_e2e.log 2
  timeout 150 python3 bench/build_split.py --device cuda --dtype float32 --model ../../zoo/models/llama-rope \
    --model ../../zoo/models/gpt2-learned --model ../../zoo/models/bloom-alibi --out $OUT/split_zoo_fp32.json > $OUT/split_zoo.log 2>&1
  echo "rc=$? split zoo"; log $OUT/split_zoo.log 4
  timeout 220 python3 bench/build_split.py --device cuda --dtype bfloat16 --shape llama-1b --out $OUT/split_llama-1b_bf16.json > $OUT/split_1b.log 2>&1
  echo "rc=$? split 1b"; log $OUT/split_1b.log 2 ;;
multi)  # #14.2 on a multi-GPU kind only: a 13B shape with device_map=auto over every GPU (no max_memory)
  timeout 500 python3 bench/build_split.py --device cuda --dtype bfloat16 --shape llama-13b --spread --out $OUT/split_llama-13b_multi.json > $OUT/split_13b.log 2>&1
  echo "rc=$? split 13b"; log $OUT/split_13b.log 2 ;;
*) echo "usage: $0 inference|build|multi"; exit 2 ;;
esac
ls -l $OUT
