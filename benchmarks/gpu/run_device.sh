#!/usr/bin/env bash
# One device session's work, in parts that each fit one 10-minute call:
#   bash benchmarks/gpu/run_device.sh certify     torch_triton certificate on the GPU + yardstick
#   bash benchmarks/gpu/run_device.sh cupy        cuda_cupy gpu_check (compile, kernels, certificate,
#                                                 bench, decode) + torch_triton SSD/Mamba-3 timings
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
# caches carried from an earlier call (see the check part)
if ls .cache/triton_cache.tgz.part* > /dev/null 2>&1; then mkdir -p "$HOME/.triton"; cat .cache/triton_cache.tgz.part* | tar -xzf - -C "$HOME/.triton"; fi
[ -f .cache/cupy_cache.tgz ] && mkdir -p "$HOME/.cupy" && tar -xzf .cache/cupy_cache.tgz -C "$HOME/.cupy"
if ls .cache/ss_build.tgz.part* > /dev/null 2>&1; then cat .cache/ss_build.tgz.part* | tar -xzf - -C /tmp; fi
mamba-core backends | tee "$OUT/backends.txt"
case "${1:-certify}" in
check|round2)
    # Correctness jobs in parallel (they share the GPU; nothing here is timed), then (round2) the
    # timings one at a time on an idle GPU. Caches come back split in <16 MB pieces so a later
    # call can carry them (.cache/) and skip the JIT/NVRTC/nvcc work.
    R="$OUT/r"; mkdir -p "$R"; cp "$OUT/device.txt" "$OUT/backends.txt" "$R/"; rm -f "$OUT/device.txt" "$OUT/backends.txt" "$OUT/pip.log"
    if [ "$1" = check ] && [ -f .official/build_ss.py ] && [ ! -d /tmp/ss_build ]; then
        (timeout 300 python3 .official/build_ss.py > "$R/ss_build.log" 2>&1; \
         tar -czf "$OUT/ss_build.tgz" --exclude='*.o' --exclude='.ninja*' -C /tmp ss_build) &
    fi
    (GPU_CHECK_PARTS=compile,kernels,conformance timeout 300 python3 backends/cuda_cupy/gpu_check.py "$R" \
        > "$R/cupy_gpu_check.log" 2>&1; echo "cupy gpu_check rc=$?" >> "$R/rc.txt") &
    # transformers would pick up .official's mamba_ssm (and ask for its CUDA build): keep it off the path
    # and use the transformers CI gets (.whl_hf/, if carried): before 5.23 its Mamba2 norm was not grouped
    [ -d .whl_hf ] && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site_hf .whl_hf/*.whl
    (PYTHONPATH=/tmp/site_hf:/tmp/site timeout 300 python3 -m pytest -q -s -p no:cacheprovider tests/test_checkpoint_hf.py \
        -k "logits or greedy" > "$R/hf_gpu.log" 2>&1; echo "hf pytest rc=$?" >> "$R/rc.txt") &
    if [ "$1" = check ]; then
        (timeout 300 mamba-conformance torch_triton --dtype bfloat16 --only 'mixer:*' --only 'lm:*' -q \
            --json "$R/torch_triton.gpu.models.bfloat16.certificate.json" > "$R/tt_bf16_models.log" 2>&1; \
            echo "tt bf16 models rc=$?" >> "$R/rc.txt") &
    fi
    wait
    cat "$R/rc.txt"; for f in "$R"/*.log; do echo "== $f"; tail -n 3 "$f"; done
    if [ "$1" = round2 ]; then
        YARDSTICK_PARTS=decode timeout 150 python3 benchmarks/gpu/yardstick.py "$R/yd" > "$R/yardstick_decode.log" 2>&1
        echo "yardstick decode rc=$?"; grep -E "ratio|FAILED" "$R/yardstick_decode.log"
        YARDSTICK_PARTS=mamba3 timeout 200 python3 benchmarks/gpu/yardstick.py "$R/y3" > "$R/yardstick_mamba3.log" 2>&1
        echo "yardstick mamba3 rc=$?"; grep -E "ratio|FAILED" "$R/yardstick_mamba3.log"
    fi
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    [ -d "$HOME/.triton/cache" ] && tar -czf - -C "$HOME/.triton" cache | split -b 15m - "$OUT/triton_cache.tgz.part"
    [ -d "$HOME/.cupy/kernel_cache" ] && tar -czf "$OUT/cupy_cache.tgz" -C "$HOME/.cupy" kernel_cache
    [ -f "$OUT/ss_build.tgz" ] && split -b 15m "$OUT/ss_build.tgz" "$OUT/ss_build.tgz.part" && rm "$OUT/ss_build.tgz"
    ls -la "$OUT"
    ;;
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
final)
    # a short last call: generation through the graph decoder, then official vs ours decode
    R="$OUT/r"; mkdir -p "$R"; mv "$OUT/device.txt" "$OUT/backends.txt" "$R/"; rm -f "$OUT/pip.log"
    timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_generation.py -k static -rs > "$R/gen_static.log" 2>&1
    echo "gen_static rc=$?"; tail -n 3 "$R/gen_static.log"
    YARDSTICK_PARTS=decode timeout 130 python3 benchmarks/gpu/yardstick.py "$R/yd" > "$R/yardstick_decode.log" 2>&1
    echo "yardstick decode rc=$?"; grep -E "ratio|FAILED" "$R/yardstick_decode.log"
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
certify-only)
    timeout 150 mamba-conformance torch_triton --dtype float32 --only 'op:*' \
        --json "$OUT/torch_triton.gpu.ops.float32.certificate.json" > "$OUT/conformance_ops.log" 2>&1
    echo "ops conformance rc=$?"; tail -1 "$OUT/conformance_ops.log"
    timeout 150 mamba-conformance torch_triton --dtype float32 --only 'mixer:*' --only 'lm:*' \
        --json "$OUT/torch_triton.gpu.models.float32.certificate.json" > "$OUT/conformance_models.log" 2>&1
    echo "model conformance rc=$?"; tail -1 "$OUT/conformance_models.log"
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
cupy)
    timeout 330 python3 backends/cuda_cupy/gpu_check.py "$OUT" 2>&1 | tail -40
    timeout 200 python3 backends/torch_triton/gpu_check.py "$OUT" 2>&1 | tail -25
    ;;
esac
