#!/usr/bin/env bash
# GPU proof run (issue 15 part 5): unit tests and the serving benches on CUDA, one output file.
# Needs no network; about 5-8 minutes on one H100/H200. Usage, from the repository root:
#   bash bench/gpu_check.sh            # output: $OUT/gpu_check.txt, else bench/results/gpu_check.txt
# It stops at the first failing step (set -e) and says which one; without CUDA it fails at once.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${OUT:-}" ]; then result="$OUT/gpu_check.txt"; else result="bench/results/gpu_check.txt"; fi
mkdir -p "$(dirname "$result")"
exec > >(tee "$result") 2>&1
export SWITCHYARD_DEVICE=cuda HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
trap 'echo "gpu_check: FAILED at: $step (see $result)"' ERR

step() { step="$1"; echo; echo "=== $1 ($(date -u +%H:%M:%S))"; }

step "GPU"
nvidia-smi || { echo "gpu_check: nvidia-smi failed: no NVIDIA driver"; exit 1; }
python - <<'PY'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA device (CUDA build: {torch.version.cuda})")
p = torch.cuda.get_device_properties(0)
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s)")
print(f"device 0: {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}, "
      f"bf16 {torch.cuda.is_bf16_supported()}")
PY

step "unit tests on cuda (tiny base on the GPU: runtime, methods, half-precision training, base/int8 settings)"
# Not fatal: the benches below still run, and the failures are counted at the end.
failed=0
python -m pytest -q -p no:cacheprovider tests/unit/runtime tests/unit/methods \
    tests/unit/training/test_precision.py tests/unit/test_quantized.py || failed=1

step "bench.hot_swap"
python -m bench.hot_swap --device cuda --repeat 10

step "bench.hetero_batch (64 distinct adapters)"
python -m bench.hetero_batch --device cuda --adapters 64 --repeat 10 --skip-peft

step "bench.http_mix"
python -m bench.http_mix --device cuda --adapters 16 --clients 8 --seconds 10

step "bench.generation"
python -m bench.generation --device cuda --rows 16 --new-tokens 32 --rounds 2

step "done"
if [ "$failed" != 0 ]; then echo "gpu_check: unit tests FAILED on cuda; output in $result"; exit 1; fi
echo "gpu_check: all steps passed; output in $result"
