#!/usr/bin/env bash
# What a session with a lent GPU runs (see the device tool's README): the benchmarks with --device cuda,
# each under its own time limit, results and logs under $OUT. Missing packages travel as wheels in .whl/.
#   benchmarks/device.sh train   # the small preset's training step beside transformers, bf16
#   benchmarks/device.sh decode  # decoding, tiny and small shapes, batch 1/8/32
#   benchmarks/device.sh media   # media tokenizers and image/speech generation
#   benchmarks/device.sh serve   # the server under load
#   benchmarks/device.sh tests   # the tests marked gpu (tests/test_gpu.py: bf16, fused AdamW, CUDA graphs, NCCL)
set -uo pipefail
OUT=${OUT:-/tmp/polymodal-bench}
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
for job in "$@"; do
    case $job in
    train)
        timeout 300 python3 benchmarks/train_step.py --device cuda --shape small --batch 8 --length 2048 \
            --rounds 3 --steps 5 --warmup 2 --json "$OUT/train_step_small_cuda.json" 2>&1 | tee "$OUT/train.log" ;;
    train-reference)
        timeout 200 python3 benchmarks/train_step.py --device cuda --rounds 3 --steps 10 --warmup 3 \
            --json "$OUT/train_step_cuda.json" 2>&1 | tee "$OUT/train_reference.log" ;;
    decode)  # bf16 weights; TORCH_LOGS=perf_hints says if a CUDA graph was skipped, and why
        TORCH_LOGS=perf_hints timeout 240 python3 benchmarks/decode.py --device cuda --shape small --repeats 2 \
            --json "$OUT/decode_small_cuda.json" 2>&1 | tee "$OUT/decode_small.log"
        timeout 100 python3 benchmarks/decode.py --device cuda --shape tiny --batch 1 --repeats 2 \
            --json "$OUT/decode_tiny_cuda.json" 2>&1 | tee "$OUT/decode_tiny.log" ;;
    decode-small-1)  # the small shape at batch 1 only: the GPU target's row
        timeout 200 python3 benchmarks/decode.py --device cuda --shape small --batch 1 --repeats 3 \
            --json "$OUT/decode_small_1_cuda.json" 2>&1 | tee "$OUT/decode_small_1.log" ;;
    serve)  # the OpenAI-compatible server under 1-64 concurrent clients, random tiny and small models
        timeout 150 python3 benchmarks/serve_load.py --device cuda --preset small --json "$OUT/serve_load_small_cuda.json" \
            2>&1 | tee "$OUT/serve_small.log"
        timeout 100 python3 benchmarks/serve_load.py --device cuda --preset tiny --json "$OUT/serve_load_tiny_cuda.json" \
            2>&1 | tee "$OUT/serve_tiny.log" ;;
    media)
        timeout 150 python3 benchmarks/media.py --device cuda --json "$OUT/media_cuda.json" 2>&1 | tee "$OUT/media.log" ;;
    tests)  # skipped on CI's CPUs: run here, where CUDA is
        timeout 300 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 | tee "$OUT/tests_gpu.log" ;;
    *) echo "unknown job $job" >&2; exit 2 ;;
    esac
done
