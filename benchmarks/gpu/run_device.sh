#!/usr/bin/env bash
# One device session's work, in parts that each fit one 10-minute call (the runs recorded in
# benchmarks/results/gpu-20261123-h100/README.md used these parts):
#   bash benchmarks/gpu/run_device.sh round3      every certificate (both GPU backends), HF checkpoints
#                                                 on the GPU, cuda_cupy checks, sweep, yardstick, bench
#   bash benchmarks/gpu/run_device.sh final       generation through the graph decoder, decode vs official
#   bash benchmarks/gpu/run_device.sh m3bench     Mamba-3 vs official, cuda_cupy kernel check, side-by-side bench
#   bash benchmarks/gpu/run_device.sh certify     torch_triton certificate (all dtypes) + yardstick
#   bash benchmarks/gpu/run_device.sh certify32   torch_triton float32 certificate + yardstick parts
# Optional carries: .cache/ with tarballs of an earlier call's ~/.triton/cache
# (triton_cache.tgz.part*), ~/.cupy/kernel_cache (cupy_cache.tgz) or /tmp/ss_build
# (ss_build.tgz.part*), restored first to skip JIT/NVRTC/nvcc work; .whl_hf/ with a
# transformers >= 5.23 wheel for the checkpoint tests.
# Needs: .whl/ with array_api_compat (not in the device image); for the official yardstick, a
# mamba_ssm source tree in .official/ (not part of this repository) whose Mamba-1 CUDA scan is
# built into /tmp/ss_build by .official/build_ss.py when that script is present.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee "$OUT/device.txt"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/.official:/tmp/ss_build
python3 -m pip install -q --no-deps --no-build-isolation -e . -e backends/cpu_numpy -e backends/torch_triton \
    -e backends/cuda_cupy -e conformance > "$OUT/pip.log" 2>&1 || tail -5 "$OUT/pip.log"
python3 - <<'PY' | tee -a "$OUT/device.txt"
import torch, triton, numpy, sys
print("python", sys.version.split()[0], "torch", torch.__version__, "triton", triton.__version__, "numpy", numpy.__version__)
try:
    import cupy; print("cupy", cupy.__version__)
except Exception as e: print("cupy missing", e)
PY
# caches carried from an earlier call (see the header)
if ls .cache/triton_cache.tgz.part* > /dev/null 2>&1; then mkdir -p "$HOME/.triton"; cat .cache/triton_cache.tgz.part* | tar -xzf - -C "$HOME/.triton"; fi
[ -f .cache/cupy_cache.tgz ] && mkdir -p "$HOME/.cupy" && tar -xzf .cache/cupy_cache.tgz -C "$HOME/.cupy"
if ls .cache/ss_build.tgz.part* > /dev/null 2>&1; then cat .cache/ss_build.tgz.part* | tar -xzf - -C /tmp; fi
mamba-core backends | tee "$OUT/backends.txt"
case "${1:-certify}" in
round3)
    # Everything of one session's last call: correctness jobs in parallel (nothing timed), then the
    # timings one at a time on the idle GPU. Each job has its own timeout; results in results.tgz.
    R="$OUT/r"; mkdir -p "$R"; mv "$OUT/device.txt" "$OUT/backends.txt" "$R/"; rm -f "$OUT/pip.log"
    [ -d .whl_hf ] && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site_hf .whl_hf/*.whl
    if [ -f .official/build_ss.py ]; then (timeout 280 python3 .official/build_ss.py > "$R/ss_build.log" 2>&1 &); fi
    job() { local name=$1 t=$2; shift 2; (timeout "$t" "$@" > "$R/$name.log" 2>&1; echo "$name rc=$?" >> "$R/rc.txt") & }
    job cupy_check 200 env GPU_CHECK_PARTS=compile,kernels,conformance python3 backends/cuda_cupy/gpu_check.py "$R"
    job cupy_tests 200 python3 -m pytest -q -p no:cacheprovider backends/cuda_cupy/tests/test_gpu.py
    job gen_static 200 python3 -m pytest -q -p no:cacheprovider tests/test_generation.py -k static -rs
    job tt_tests 200 python3 -m pytest -q -p no:cacheprovider backends/torch_triton/tests/test_mixer_steps.py \
        backends/torch_triton/tests/test_ssd_chunk_cap.py
    job hf_gpu 200 env PYTHONPATH=/tmp/site_hf:/tmp/site python3 -m pytest -q -s -p no:cacheprovider \
        tests/test_checkpoint_hf.py -k "logits or greedy"
    job tt_f32_models 200 mamba-conformance torch_triton --dtype float32 --only 'mixer:*' --only 'lm:*' -q \
        --json "$R/torch_triton.gpu.models.float32.certificate.json"
    job tt_f32_ops 200 mamba-conformance torch_triton --dtype float32 --only 'op:*' -q \
        --json "$R/torch_triton.gpu.ops.float32.certificate.json"
    job tt_bf16_ops 200 mamba-conformance torch_triton --dtype bfloat16 --only 'op:*' -q \
        --json "$R/torch_triton.gpu.ops.bfloat16.certificate.json"
    job tt_bf16_models 200 mamba-conformance torch_triton --dtype bfloat16 --only 'mixer:*' --only 'lm:*' -q \
        --json "$R/torch_triton.gpu.models.bfloat16.certificate.json"
    wait
    cat "$R/rc.txt"; for f in "$R"/*.log; do echo "== $f"; tail -n 2 "$f"; done
    for i in $(seq 1 30); do ls /tmp/ss_build/selective_scan_cuda*.so > /dev/null 2>&1 && break; sleep 2; done
    [ -f benchmarks/gpu/sweep_tt.py ] && { timeout 125 python3 benchmarks/gpu/sweep_tt.py "$R/sweep" --budget 100 > "$R/sweep_tt.log" 2>&1; echo "sweep rc=$?"; tail -n 25 "$R/sweep_tt.log"; }
    YARDSTICK_PARTS=mamba1,mamba2,decode timeout 110 python3 benchmarks/gpu/yardstick.py "$R/yd" > "$R/yardstick.log" 2>&1
    echo "yardstick rc=$?"; grep -E "ratio|FAILED" "$R/yardstick.log"
    GPU_CHECK_PARTS=bench,decode timeout 80 python3 backends/cuda_cupy/gpu_check.py "$R/cupy_bench" > "$R/cupy_bench.log" 2>&1
    echo "cupy bench rc=$?"; tail -n 30 "$R/cupy_bench.log"
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"; ls -la "$OUT"
    ;;
m3bench)
    # Mamba-3 SISO against the official kernels (their autotune space cut, see yardstick.py), the
    # cuda_cupy kernel check (dA summed in float64), then the side-by-side bench and decode
    # (cuda_cupy and torch_triton, float32, same inputs). Results in results.tgz.
    R="$OUT/r"; mkdir -p "$R"; mv "$OUT/device.txt" "$OUT/backends.txt" "$R/"; rm -f "$OUT/pip.log"
    (GPU_CHECK_PARTS=compile,kernels timeout 150 python3 backends/cuda_cupy/gpu_check.py "$R/cupy_kernels" \
        > "$R/cupy_kernels.log" 2>&1; echo "cupy kernels rc=$?" >> "$R/rc.txt") &
    YARDSTICK_PARTS=mamba3 YARDSTICK_M3_AUTOTUNE=reduced timeout 300 python3 benchmarks/gpu/yardstick.py "$R/yd" \
        > "$R/yardstick_m3.log" 2>&1; echo "yardstick m3 rc=$?"; grep -E "ratio|FAILED|\] " "$R/yardstick_m3.log"
    wait; cat "$R/rc.txt"; grep -E "max|rel|FAIL|Error" "$R/cupy_kernels.log" | tail -n 30
    GPU_CHECK_PARTS=bench,decode timeout 190 python3 backends/cuda_cupy/gpu_check.py "$R/bench" > "$R/bench.log" 2>&1
    echo "bench rc=$?"; grep -E "cuda_cupy|torch_triton|decode" "$R/bench.log" | cut -c1-400
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
final)
    # a short last call: generation through the graph decoder, then official vs ours decode
    R="$OUT/r"; mkdir -p "$R"; mv "$OUT/device.txt" "$OUT/backends.txt" "$R/"; rm -f "$OUT/pip.log"
    timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_generation.py -k static -rs > "$R/gen_static.log" 2>&1
    echo "gen_static rc=$?"; tail -n 3 "$R/gen_static.log"
    YARDSTICK_PARTS=decode timeout 130 python3 benchmarks/gpu/yardstick.py "$R/yd" > "$R/yardstick_decode.log" 2>&1
    echo "yardstick decode rc=$?"; grep -E "ratio|FAILED" "$R/yardstick_decode.log"
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
certify32)
    if [ -f .official/build_ss.py ]; then (timeout 280 python3 .official/build_ss.py > "$OUT/ss_build.log" 2>&1 &); fi
    timeout 130 mamba-conformance torch_triton --dtype float32 --only 'op:*' \
        --json "$OUT/torch_triton.gpu.ops.float32.certificate.json" > "$OUT/conformance_ops.log" 2>&1
    echo "ops conformance rc=$?"; tail -1 "$OUT/conformance_ops.log"
    timeout 120 mamba-conformance torch_triton --dtype float32 --only 'mixer:*' --only 'lm:*' \
        --json "$OUT/torch_triton.gpu.models.float32.certificate.json" > "$OUT/conformance_models.log" 2>&1
    echo "model conformance rc=$?"; tail -1 "$OUT/conformance_models.log"
    for i in $(seq 1 40); do ls /tmp/ss_build/selective_scan_cuda*.so > /dev/null 2>&1 && break; sleep 3; done
    YARDSTICK_PARTS=${YARDSTICK_PARTS:-mamba1,mamba3,decode} timeout 230 python3 benchmarks/gpu/yardstick.py "$OUT" \
        > "$OUT/yardstick.log" 2>&1; echo "yardstick rc=$?"; grep -E "ratio|FAILED|\] " "$OUT/yardstick.log"
    ;;
certify)
    if [ -f .official/build_ss.py ]; then (python3 .official/build_ss.py > "$OUT/ss_build.log" 2>&1 &); fi
    timeout 270 mamba-conformance torch_triton --json "$OUT/torch_triton.gpu.certificate.json" --quiet \
        2>&1 | tail -5
    for i in $(seq 1 60); do ls /tmp/ss_build/selective_scan_cuda*.so > /dev/null 2>&1 && break; sleep 3; done
    tail -2 "$OUT/ss_build.log" 2>/dev/null
    timeout 250 python3 benchmarks/gpu/yardstick.py "$OUT" 2>&1 | grep -v Warning | tail -40
    ;;
esac
