#!/usr/bin/env bash
# One device session's work, in parts that each fit one 10-minute call (the runs recorded in
# benchmarks/results/gpu-20261123-h100/README.md used these parts):
#   bash benchmarks/gpu/run_device.sh round3      every certificate (both GPU backends), HF checkpoints
#                                                 on the GPU, cuda_cupy checks, sweep, yardstick, bench
#   bash benchmarks/gpu/run_device.sh final       generation through the graph decoder, decode vs official
#   bash benchmarks/gpu/run_device.sh m3bench     Mamba-3 vs official, cuda_cupy kernel check, side-by-side bench
#   bash benchmarks/gpu/run_device.sh kernels2    new kernels checked on the GPU, then sweep, yardstick, bench
#   bash benchmarks/gpu/run_device.sh certify2    certificates under the new defaults, GPU tests, last timings
#   bash benchmarks/gpu/run_device.sh fp32fix     float32 models with IEEE dots; where tf32x3 faults
#   bash benchmarks/gpu/run_device.sh certify3    float32 op certificate (IEEE dots), float32 Mamba-3 rows
#   bash benchmarks/gpu/run_device.sh round4      cuda_cupy tiled row scan: GPU tests, where SSD time goes,
#                                                 Mamba-1 sweep (BE < 32), torch_triton float32 SSD
#   bash benchmarks/gpu/run_device.sh round5      tiled decay gradient checked and timed, Mamba-1 sweep around
#                                                 round4's best (bf16, float32), torch_triton float32 SSD
#   bash benchmarks/gpu/run_device.sh round6      decay gradient from the tiled sweep's checkpoints: tests,
#                                                 cuda_cupy certificate, timings, torch_triton float32 SSD
#   bash benchmarks/gpu/run_device.sh tests7      the cuda_cupy GPU tests alone
#   bash benchmarks/gpu/run_device.sh final8      cuda_cupy norms and conv: GPU tests, certificate, timings
#   bash benchmarks/gpu/run_device.sh certify4    every certificate and GPU test under the final defaults,
#                                                 side-by-side bench, decode, Mamba-1 yardstick
#   bash benchmarks/gpu/run_device.sh s5a         fused Mamba-2 decode step, GEMV, conv/norm v2: tests,
#                                                 certificate, timings (session 5)
#   bash benchmarks/gpu/run_device.sh s5b         fused step without its ticket tail, GEMV rounds: tests,
#                                                 certificate, decode beside torch_triton, MIMO bench
#   bash benchmarks/gpu/run_device.sh s5c         whole-model decode step (norms folded into projections):
#                                                 tests, certificate, decode beside torch_triton
#   bash benchmarks/gpu/run_device.sh s5d         the fused step's L2 prefetch of out_proj: tests, decode
#                                                 with and without it, beside torch_triton
#   bash benchmarks/gpu/run_device.sh s5e         GEMV x loads under the weights' flight: tests, decode
#   bash benchmarks/gpu/run_device.sh s5f         the session's final code: all cuda_cupy GPU tests, certificate,
#                                                 norms/conv and decode timings
#   bash benchmarks/gpu/run_device.sh s6a         programmatic dependent launch: its tests, decode with and
#                                                 without it beside torch_triton (session 6)
#   bash benchmarks/gpu/run_device.sh s7a         review commit's GPU tests, Mamba-1 "tr_fold" sweep and
#                                                 yardstick, MIMO/SISO beside torch_triton (session 7)
#   bash benchmarks/gpu/run_device.sh s7b         the new Mamba-1 defaults: GPU tests, certificate entries, sweep,
#                                                 yardstick (Mamba-1, Mamba-3 pieces), SISO beside tf32x3,
#                                                 the Mamba-3 VJP launch sweep (session 8)
#   bash benchmarks/gpu/run_device.sh s8a         the Mamba-3 VJP's new default and B/C kernels: certificate entries
#                                                 (both GPU backends), yardstick with the backward's pieces, VJP sweep,
#                                                 SISO cuda_cupy beside torch_triton
#   bash benchmarks/gpu/run_device.sh s8b         s8a without the cuda_cupy benches (a short device budget)
#   bash benchmarks/gpu/run_device.sh s9a         the B/C kernels' launch grid (T, warps, heads a program) and
#                                                 Triton activations: GPU tests, certificate entries, B/C sweep,
#                                                 the Mamba-3 VJP around its run-23 default, Mamba-3 yardstick
#   bash benchmarks/gpu/run_device.sh s9b         the session's final defaults and the silu_gate op: GPU tests,
#                                                 certificate entries (both GPU backends), Mamba-3 yardstick
#                                                 alone on the GPU, float32 SISO cuda_cupy beside torch_triton
#   bash benchmarks/gpu/run_device.sh s9c         every float32 bench row, cuda_cupy beside torch_triton's defaults
#                                                 (the cuda_cupy issue's 1.25x target); torch_triton compiled first,
#                                                 a background process a row (run 27 ran an earlier, one-process form)
#   bash benchmarks/gpu/run_device.sh s10a        the Mamba-3 forward and state recompute in P blocks (bp): the
#                                                 m3 launch grid (each config compiled in its own background
#                                                 process first), the Mamba-3 yardstick, the Mamba-1 yardstick
#                                                 with the VJP's "upcast": "outputs" row (not yet run)
#   bash benchmarks/gpu/run_device.sh s10b        the Mamba-1 float32 VJP grid ("tr" never timed in float32: the bf16
#                                                 VJP runs the float32 kernels), then the Mamba-1 yardstick
#   bash benchmarks/gpu/run_device.sh s10c        float32 Mamba-3 launches of their own ("fwd_ieee"/"bwd_ieee", 16 rows):
#                                                 GPU tests, certificate entries, SISO and MIMO float32 grids, the
#                                                 bf16 forward's new default in the yardstick, float32 Mamba-3 bench
#                                                 rows beside cuda_cupy; the norm rows' host/device split first
#   bash benchmarks/gpu/run_device.sh s11a        cuda_cupy's eager launches through CuPy (PDL only in graph captures):
#                                                 the short rows' host/device split with PDL always on and under the
#                                                 default, a host profile; then the Mamba-3 yardstick (twice, GPU
#                                                 alone), the PDL and norm GPU tests, the cuda_cupy certificate, Mamba-3
#                                                 GPU tests and float32 certificate entries beside the bf16 MIMO (R=4)
#                                                 launch grid
#   bash benchmarks/gpu/run_device.sh s11b        after run 33: the short rows' host/device split (cached dtype checks), cuda_cupy GPU tests, the
#                                                 Mamba-3 GPU tests and certificate entries (bf16, float32) under the
#                                                 16-bit backward's rows cap of 16
#   bash benchmarks/gpu/run_device.sh s11c        Nsight Compute over one forward+backward (benchmarks/gpu/ncu_targets.py; not yet run):
#                                                 torch_triton Mamba-1 and Mamba-3 SISO (bf16), the official Mamba-3,
#                                                 torch_triton's float32 Mamba-3 forward; the details pages kept
#   bash benchmarks/gpu/run_device.sh s12a        cuda_cupy's GEMV with K split over warps (MAMBA_CUPY_GEMV_SPLIT; not yet run):
#                                                 its GPU tests, the GEMVs alone with and without the split,
#                                                 decode (graphs with and without it) beside torch_triton, 3 processes
#   bash benchmarks/gpu/run_device.sh s12b        torch_triton's "lanes" Mamba-1 VJP (not yet run): its compiled GPU tests,
#                                                 the float32 VJP grid beside "base" (the bf16 VJP upcasts to it), and
#                                                 bf16 inputs straight into "lanes"; the Mamba-3 angle scan's "seq" forward
#   bash benchmarks/gpu/run_device.sh s13         session 13's defaults (run 39; its device time was short): Mamba-3 yardstick,
#                                                 certificate entries and GPU tests, Mamba-1 yardstick, kernel tables,
#                                                 the VJP grid at BE=16, decode with kernel tables
#   bash benchmarks/gpu/run_device.sh s14         the next session's first call (not yet run): the saving forms and the BE=16 bf16
#                                                 Mamba-1 VJP (GPU tests, certificate entries), the Mamba-3 and Mamba-1 yardsticks
#                                                 alone on the machine, Mamba-3's kernel table, the B/C VJP at 1-2 warps, the Mamba-1
#                                                 VJP grid (BE=32, the state-saving forward's launch), the float32 VJP at BE=16
#   bash benchmarks/gpu/run_device.sh s14b        the next session's second call (not yet run): decode with kernel tables, the
#                                                 Mamba-2 yardstick, cuda_cupy GEMVs under every split, decode with the split forced
#   bash benchmarks/gpu/run_device.sh s14c        the next session's third call (not yet run): the "blocked" Mamba-3 backward's
#                                                 GPU tests, then the VJP grid, serial against blocks of 2, 4 and 8 chunks
#   bash benchmarks/gpu/run_device.sh certify     torch_triton certificate (all dtypes) + yardstick
#   bash benchmarks/gpu/run_device.sh certify32   torch_triton float32 certificate + yardstick parts
# Optional carries: .cache/ with tarballs of an earlier call's ~/.triton/cache
# (triton_cache.tgz.part*), ~/.cupy/kernel_cache (cupy_cache.tgz) or /tmp/ss_build
# (ss_build.tgz.part*), restored first to skip JIT/NVRTC/nvcc work; .whl_hf/ with a
# transformers >= 5.23 wheel for the checkpoint tests.
# Needs: .whl/ with array_api_compat (and einops for mamba_ssm) wheels (not in the device image);
# for the official yardstick, a mamba_ssm source tree in .official/ (not part of this
# repository: `git archive HEAD mamba_ssm csrc/selective_scan` of state-spaces/mamba) whose
# Mamba-1 CUDA scan benchmarks/gpu/build_official_ss.py builds into /tmp/ss_build (older parts
# call .official/build_ss.py, the untracked script of earlier sessions).
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
# Helpers of the parts below. results_dir: everything a part keeps goes to $OUT/r (tarred into
# results.tgz at the end: $OUT returns at most 8 files). job NAME SECONDS CMD...: CMD in the
# background with its own timeout, output in $R/NAME.log, exit status in $R/rc.txt. tmo SECONDS:
# SECONDS, or less when that would pass $DEADLINE (seconds since the script started; default
# 560), so the tar at the end always runs inside the device's 600 s call.
results_dir() { R="$OUT/r"; mkdir -p "$R"; mv "$OUT/device.txt" "$OUT/backends.txt" "$R/"; rm -f "$OUT/pip.log"; }
job() { local name=$1 t=$2; shift 2; (timeout "$t" "$@" > "$R/$name.log" 2>&1; echo "$name rc=$?" >> "$R/rc.txt") & }
# step NAME SECONDS PATTERN CMD...: CMD in the foreground with tmo SECONDS, output in $R/NAME.log;
# prints its exit status and the log's lines matching PATTERN (grep -E). Used by the parts
# written from session 14 on; the older parts are kept as they ran.
step() {
    local name=$1 t=$2 pat=$3; shift 3
    timeout "$(tmo "$t")" "$@" > "$R/$name.log" 2>&1
    echo "$name rc=$?"; grep -E "$pat" "$R/$name.log" | cut -c1-300
}
tmo() { local l=$(( ${DEADLINE:-560} - SECONDS )); [ "$l" -lt "$1" ] && echo $(( l > 1 ? l : 1 )) || echo "$1"; }
case "${1:-certify}" in
s14b)
    # The next session's second call (not yet run): cuda_cupy's batch-1 margin. Decode with
    # kernel tables (the graph without PDL too; moved here from s14), the GEMVs alone under
    # every split (in_proj's K over 2 or 4 warps too, which "auto" never picks at batch 1),
    # then decode beside graphs with the split forced to 2 and to 4, each with torch_triton.
    results_dir
    DEADLINE=${DEADLINE:-500}
    step decode 75 "decode batch|torch_triton" env GPU_CHECK_DECODE_KERNELS=1 GPU_CHECK_PARTS=decode \
        python3 backends/cuda_cupy/gpu_check.py "$R/decode"
    # the Mamba-2 SSD yardstick, its official row now without .grad accumulation (d0a9a75)
    step yardstick-m2 70 "Mamba-2|FAILED" env YARDSTICK_PARTS=mamba2 python3 benchmarks/gpu/yardstick.py "$R/yardstick-m2"
    step check_mixer_step 120 "^linear|mamba2_step|FAIL" env CHECK_GEMV_SPLITS=0,auto,2,4 \
        python3 benchmarks/gpu/check_mixer_step.py "$R/kernels"
    for alt in 2 4; do
        step "decode-$alt" 110 "decode batch|torch_triton" env GPU_CHECK_SPLIT_OTHER=$alt GPU_CHECK_PARTS=decode \
            python3 backends/cuda_cupy/gpu_check.py "$R/decode-$alt"
    done
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
s14)
    # The next session's first call (written in sessions 13-14; no device was lent in 14): the
    # saving forms (Mamba-3's per-head B/C and chunk states kept by the forward; Mamba-1's states
    # as an option) and the BE=16 bf16 Mamba-1 VJP. Correctness beside the official Mamba-1
    # build (nothing timed then), then each timing with the GPU and the host to itself, most
    # telling first: the Mamba-3 yardstick (saving form against no residuals), the Mamba-1
    # yardstick (the official rows without .grad accumulation since d0a9a75; the states-kept
    # row), Mamba-3's kernel table, the B/C VJP at 1-2 warps (no barriers in its head loop:
    # benchmarks/sass_stats.py), the Mamba-1 VJP grid, the float32 VJP at BE=16.
    results_dir
    DEADLINE=${DEADLINE:-570}
    job ss_build $(tmo 240) python3 benchmarks/gpu/build_official_ss.py .official /tmp/ss_build
    job tt_tests $(tmo 200) env TRITON_INTERPRET=0 python3 -m pytest -q -rs -p no:cacheprovider \
        backends/torch_triton/tests/test_m1_norm_conv_kernels.py backends/torch_triton/tests/test_mamba3_fused.py \
        -k "(test_selective_scan and not transposed and not variants) or saving"
    for dt in bfloat16 float32; do
        job "tt_cert_$dt" $(tmo 200) mamba-conformance torch_triton -v --dtype $dt --only 'op:selective_scan*' \
            --only 'mixer:mamba1*' --only 'lm:mamba1*' --only 'op:mamba3_scan' --only 'op:mamba3_rope_scan' \
            --only 'mixer:mamba3*' --json "$R/torch_triton.gpu.s14.$dt.certificate.json"
    done
    wait; cat "$R/rc.txt"; tail -n 2 "$R/tt_tests.log" | cut -c1-300; grep -E "FAILED|Error" "$R/tt_tests.log" | head -5 | cut -c1-300
    for dt in bfloat16 float32; do grep -E "CERTIFIED|FAIL|ERROR" "$R/tt_cert_$dt.log" | tail -n 3 | cut -c1-200; done
    step yardstick-m3 150 "Mamba-3 SISO|FAILED|pieces" env YARDSTICK_PARTS=mamba3 YARDSTICK_M3_AUTOTUNE=reduced \
        python3 benchmarks/gpu/yardstick.py "$R/yardstick-m3"
    [ -d /tmp/ss_build ] && step yardstick-m1 90 "Mamba-1|FAILED" env YARDSTICK_PARTS=mamba1 \
        python3 benchmarks/gpu/yardstick.py "$R/yardstick-m1"
    step kernels_m3_ours 30 " us " env YARDSTICK_M3_AUTOTUNE=reduced \
        python3 benchmarks/gpu/ncu_targets.py m3_ours --kernels 20
    # the B/C VJP (0.50 ms against the official's 0.29, run 39): its head loop at 4 warps has 24
    # barriers a head (the bias shares' sums over T); at 1 warp none (sass_stats, session 14)
    step sweep_bc 45 "bc (bc|bc_vjp) " env SWEEP_BC="8:4:-" SWEEP_BC_VJP="8:4:-,4:1:-,4:2:-,8:2:-,2:1:-" \
        python3 benchmarks/gpu/sweep_tt.py "$R/bc" --parts bc --budget 40
    # bf16 VJP: 4 channels a thread (a quarter of BE=8's dB/dC partials); the state-saving
    # forward at launches of its own (save_BE:save_warps; 0.66 ms of run 39's 3.4)
    step sweep_m1_bf16 60 "m1 (fwd|vjp)" env SWEEP_M1_FWD="tr_fold:16:16:1" \
        SWEEP_M1_BWD="lanes:4:16:1:255,lanes:4:32:1:255,lanes:4:16:1:255:8:1,lanes:4:16:1:255:32:4,lanes:4:16:1:255:64:4" \
        python3 benchmarks/gpu/sweep_tt.py "$R/m1_bf16" --parts m1 --budget 55
    step sweep_m1_f32 40 "m1 (fwd|vjp)" env SWEEP_M1_DTYPE=float32 SWEEP_M1_FWD="tr_scan:8:8:1" \
        SWEEP_M1_BWD="lanes:4:16:1:255,lanes:4:8:1:128" python3 benchmarks/gpu/sweep_tt.py "$R/m1_f32" --parts m1 --budget 35
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
s14c)
    # The next session's third call (written in session 14, not yet run): the "blocked" Mamba-3
    # backward (kernels/mamba3.py CONFIG "bwd" "variant"), checked on the GPU against the serial
    # one, then the VJP grid: serial against blocks of 2, 4 and 8 chunks (bf16, SISO shape).
    results_dir
    DEADLINE=${DEADLINE:-450}
    step tt_blocked_tests 120 "passed|failed|FAILED|Error" env TRITON_INTERPRET=0 python3 -m pytest -q -rs \
        -p no:cacheprovider backends/torch_triton/tests/test_mamba3_fused.py -k "blocked or saving or state_stride"
    step sweep_m3_blocked 300 "m3 bwd|VJP" env SWEEP_M3_FWD="-:-:-" \
        SWEEP_M3="16:4:1,16:4:1:-:-:2,16:4:1:-:-:4,16:4:1:-:-:8,16:8:1:-:-:4,32:4:1:-:-:2" \
        python3 benchmarks/gpu/sweep_tt.py "$R/m3_blocked" --parts m3 --budget 290
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
s13)
    # Run 39: the new defaults (lanes VJP, angles "seq", split GEMV) in one call ordered by what
    # decides the issues, the correctness jobs together between the timings. (Its Mamba-3
    # yardstick shared the host with the official build's nvcc: s14 orders them apart.)
    results_dir
    DEADLINE=${DEADLINE:-570}
    job ss_build $(tmo 240) python3 benchmarks/gpu/build_official_ss.py .official /tmp/ss_build
    YARDSTICK_PARTS=mamba3 YARDSTICK_M3_AUTOTUNE=reduced timeout $(tmo 110) python3 benchmarks/gpu/yardstick.py "$R/yardstick-m3" > "$R/yardstick-m3.log" 2>&1
    echo "yardstick m3 rc=$?"; grep -E "Mamba-3 SISO|FAILED|pieces" "$R/yardstick-m3.log" | cut -c1-300
    job tt_tests $(tmo 150) env TRITON_INTERPRET=0 python3 -m pytest -q -rs -p no:cacheprovider \
        backends/torch_triton/tests/test_m1_norm_conv_kernels.py backends/torch_triton/tests/test_rope_angles_kernels.py \
        -k "(test_selective_scan and not transposed and not variants) or transposed_bf16 or (test_mamba3_angles and not vjp)"
    for dt in bfloat16 float32; do
        job "tt_cert_$dt" $(tmo 150) mamba-conformance torch_triton -v --dtype $dt --only 'op:selective_scan*' \
            --only 'op:mamba3_angles*' --only 'mixer:mamba1*' --only 'lm:mamba1*' --only 'mixer:mamba3' \
            --json "$R/torch_triton.gpu.s13.$dt.certificate.json"
    done
    wait; cat "$R/rc.txt"; tail -n 2 "$R/tt_tests.log" | cut -c1-300; grep -E "FAILED|Error" "$R/tt_tests.log" | head -5 | cut -c1-300
    for dt in bfloat16 float32; do grep -E "PASS|FAIL|ERROR" "$R/tt_cert_$dt.log" | grep -vE "^ +PASS" | tail -n 4 | cut -c1-200; done
    [ -d /tmp/ss_build ] && YARDSTICK_PARTS=mamba1 timeout $(tmo 90) python3 benchmarks/gpu/yardstick.py "$R/yardstick-m1" > "$R/yardstick-m1.log" 2>&1
    echo "yardstick m1 rc=$?"; grep -E "Mamba-1|FAILED" "$R/yardstick-m1.log" | cut -c1-300
    for t in m1_ours m1_official; do
        timeout $(tmo 25) python3 benchmarks/gpu/ncu_targets.py $t --kernels 20 > "$R/kernels_$t.log" 2>&1
        echo "kernels $t rc=$?"; head -n 10 "$R/kernels_$t.log" | cut -c1-180
    done
    SWEEP_M1_FWD="tr_fold:16:16:1" SWEEP_M1_BWD="lanes:4:8:1:128,lanes:2:16:1,lanes:4:16:1:255,lanes:2:16:2,lanes:4:16:2:128" \
        timeout $(tmo 45) python3 benchmarks/gpu/sweep_tt.py "$R/m1lanes" --parts m1 --budget 40 > "$R/sweep_m1_lanes.log" 2>&1
    echo "sweep m1 lanes rc=$?"; grep -E "m1 (fwd|vjp)" "$R/sweep_m1_lanes.log" | cut -c1-200
    for t in m3_ours m3_official; do
        YARDSTICK_M3_AUTOTUNE=reduced timeout $(tmo 30) python3 benchmarks/gpu/ncu_targets.py $t --kernels 20 > "$R/kernels_$t.log" 2>&1
        echo "kernels $t rc=$?"; head -n 14 "$R/kernels_$t.log" | cut -c1-180
    done
    GPU_CHECK_DECODE_KERNELS=1 GPU_CHECK_PARTS=decode timeout $(tmo 80) python3 backends/cuda_cupy/gpu_check.py "$R/decode" > "$R/decode.log" 2>&1
    echo "decode rc=$?"; grep -E "decode batch|torch_triton" "$R/decode.log" | cut -c1-300
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
s12b)
    # Session 12 (no device): the "lanes" Mamba-1 VJP (kernels/selective_scan_lanes.py, ~17%
    # fewer instructions than "base" when compiled on the CPU) checked on the GPU against the
    # reference, then timed beside "base" in float32 (the bf16 VJP upcasts to these kernels):
    # register caps 128/160/none, 2-8 tokens a chunk, 1 and 4 warps.
    results_dir
    DEADLINE=${DEADLINE:-560}
    timeout $(tmo 110) env TRITON_INTERPRET=0 python3 -m pytest -q -rs -p no:cacheprovider \
        backends/torch_triton/tests/test_m1_norm_conv_kernels.py -k "lanes_vjp" > "$R/tt_lanes_tests.log" 2>&1
    echo "lanes tests rc=$?"; tail -n 3 "$R/tt_lanes_tests.log" | cut -c1-300
    SWEEP_M1_DTYPE=float32 SWEEP_M1_FWD="tr_scan:8:8:1" \
    SWEEP_M1_BWD="base:8:32:4,lanes:4:8:1:160,lanes:4:8:1:128,lanes:4:8:1,lanes:2:8:1,lanes:4:32:4:160,lanes:2:32:4,lanes:8:8:1:168" \
        timeout $(tmo 180) python3 benchmarks/gpu/sweep_tt.py "$R/m1lanes" --parts m1 --budget 170 > "$R/sweep_m1_lanes.log" 2>&1
    echo "sweep m1 lanes rc=$?"; grep -E "m1 (fwd|vjp)" "$R/sweep_m1_lanes.log" | cut -c1-200
    # bf16 inputs straight into "lanes" (no float32 copies; the default VJP upcasts: ~5.8 ms,
    # runs 29-30), beside the bf16 forward default
    SWEEP_M1_FWD="tr_fold:16:16:1" SWEEP_M1_BWD="lanes:4:8:1:160,lanes:2:8:1,lanes:4:8:1:128" \
        timeout $(tmo 120) python3 benchmarks/gpu/sweep_tt.py "$R/m1lanes_bf16" --parts m1 --budget 110 > "$R/sweep_m1_lanes_bf16.log" 2>&1
    echo "sweep m1 lanes bf16 rc=$?"; grep -E "m1 (fwd|vjp)" "$R/sweep_m1_lanes_bf16.log" | cut -c1-200
    # the Mamba-3 angle scan's "seq" forward (rope.py) beside the default "scan", SISO shape
    SWEEP_BC="8:4:-" SWEEP_BC_VJP="8:4:-" SWEEP_ANGLES="16:-:-,16:8:8:seq,16:16:8:seq,32:8:8:seq,32:16:8:seq,16:4:8:seq,64:16:8:seq" \
        timeout $(tmo 90) python3 benchmarks/gpu/sweep_tt.py "$R/angles_seq" --parts bc --budget 80 > "$R/sweep_angles_seq.log" 2>&1
    echo "sweep angles rc=$?"; grep -E "angles_(fwd|bwd)" "$R/sweep_angles_seq.log" | cut -c1-200
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
s12a)
    # Session 12 (no device that session; written for the next): cuda_cupy's GEMV with each
    # weight row's K split over 2-4 warps of a block (kernels/linear.py split_k, off by default).
    # First its GPU tests (the GEMV against NumPy, group scales, PDL bit-identity, the graph
    # decoder, each with the split forced to 4 and off), then the GEMVs alone (graphs over
    # >200 MB of weights, split off and auto) and decode: the PDL graph without and with the
    # split, beside torch_triton, three processes.
    results_dir
    DEADLINE=${DEADLINE:-480}
    timeout $(tmo 200) python3 -m pytest -q -rs -p no:cacheprovider backends/cuda_cupy/tests/test_gpu.py \
        backends/cuda_cupy/tests/test_mixer_steps_gpu.py backends/cuda_cupy/tests/test_pdl.py \
        -k "linear or gemv or graph_decoder" > "$R/cupy_gemv_tests.log" 2>&1
    echo "gemv tests rc=$?"; tail -n 3 "$R/cupy_gemv_tests.log" | cut -c1-300; grep -E "FAILED|Error" "$R/cupy_gemv_tests.log" | head -5 | cut -c1-300
    timeout $(tmo 90) python3 benchmarks/gpu/check_mixer_step.py "$R/kernels" > "$R/check_mixer_step.log" 2>&1
    echo "check_mixer_step rc=$?"; grep -E "^linear|mamba2_step|FAIL|PASS" "$R/check_mixer_step.log" | cut -c1-200
    for i in 1 2 3; do
        GPU_CHECK_PARTS=decode timeout $(tmo 110) python3 backends/cuda_cupy/gpu_check.py "$R/decode-$i" > "$R/decode-$i.log" 2>&1
        echo "decode ($i) rc=$?"; grep -E "decode batch|torch_triton" "$R/decode-$i.log" | cut -c1-400
    done
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
s11c)
    # Where the unmet #5 targets spend their time, kernel by kernel: Mamba-1 forward+backward
    # (1.98x the official) and Mamba-3 SISO (1.22x / 1.34x), beside the official Mamba-3 kernels.
    results_dir
    DEADLINE=${DEADLINE:-300}
    (command -v ncu && ncu --version | tail -1) | tee "$R/ncu_version.txt"
    for t in m1_ours m3_ours m3_official m3_f32_fwd; do
        YARDSTICK_M3_AUTOTUNE=reduced timeout $(tmo 100) ncu --profile-from-start off --clock-control none \
            --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
            --section MemoryWorkloadAnalysis -f -o "$R/ncu_$t" python3 benchmarks/gpu/ncu_targets.py $t > "$R/ncu_$t.log" 2>&1
        echo "$t rc=$?"; grep -vE "^==PROF==" "$R/ncu_$t.log" | tail -n 3 | cut -c1-300
        [ -f "$R/ncu_$t.ncu-rep" ] && ncu -i "$R/ncu_$t.ncu-rep" --page details > "$R/ncu_$t.details.txt" 2>&1 \
            && grep -E "^  [A-Za-z_].*\(|Duration" "$R/ncu_$t.details.txt" | paste - - | cut -c1-200 | head -30
        rm -f "$R/ncu_$t.ncu-rep"
    done
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
s11b)
    # After run 33: the short rows' host/device split again (runs_here's dtype check and ctype
    # cached), then the Mamba-3 GPU tests and bf16 certificate entries under the 16-bit
    # backward's new rows cap (16: MIMO R = 4 at 4 tokens a chunk), and the float32 ones.
    results_dir
    DEADLINE=${DEADLINE:-300}
    timeout $(tmo 70) python3 benchmarks/gpu/launch_cost.py "$R/launch_cost" --rounds 5 > "$R/launch_cost.log" 2>&1
    echo "launch_cost rc=$?"; grep -vE "^round" "$R/launch_cost.log" | cut -c1-200
    job cupy_tests $(tmo 150) python3 -m pytest -q -rs -p no:cacheprovider backends/cuda_cupy/tests/test_pdl.py \
        backends/cuda_cupy/tests/test_gpu.py -k "pdl or norm or conv or graph or scan"
    job tt_tests $(tmo 200) env TRITON_INTERPRET=0 python3 -m pytest -q -rs -p no:cacheprovider \
        backends/torch_triton/tests/test_ssd_mamba3_kernels.py -k mamba3
    for dt in bfloat16 float32; do
        job "tt_cert_$dt" $(tmo 220) mamba-conformance torch_triton -v --dtype $dt --only 'op:mamba3*' \
            --only 'mixer:mamba3*' --only 'lm:mamba3*' --json "$R/torch_triton.gpu.s11b.$dt.certificate.json"
    done
    wait
    for w in cupy_tests tt_tests; do tail -n 3 "$R/$w.log" | cut -c1-300; grep -E "FAILED|Error" "$R/$w.log" | head -5 | cut -c1-300; done
    for w in tt_cert_bfloat16 tt_cert_float32; do echo "$w: $(grep -cE " PASS" "$R/$w.log") PASS lines"; tail -n 2 "$R/$w.log" | cut -c1-300; grep -E "FAIL|ERROR" "$R/$w.log" | head -5 | cut -c1-300; done
    cat "$R/rc.txt"
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
s11a)
    # Session 11: the PDL switch's new default ("capture": eager launches through CuPy) against
    # PDL on every launch (the previous default), the short rows interleaved with torch_triton;
    # then a host profile under the default, the Mamba-3 yardstick, tests and certificates, and
    # the bf16 MIMO grid.
    results_dir
    DEADLINE=${DEADLINE:-540}
    MAMBA_CUPY_PDL=1 timeout $(tmo 45) python3 benchmarks/gpu/launch_cost.py "$R/launch_cost_pdl1" --rounds 3 \
        > "$R/launch_cost_pdl1.log" 2>&1
    echo "launch_cost PDL=1 rc=$?"; grep -vE "^round" "$R/launch_cost_pdl1.log" | cut -c1-200
    timeout $(tmo 70) python3 benchmarks/gpu/launch_cost.py "$R/launch_cost" --rounds 5 --profile 300 \
        > "$R/launch_cost.log" 2>&1
    echo "launch_cost default rc=$?"; grep -vE "^round|^profile" "$R/launch_cost.log" | cut -c1-200
    for i in 1 2; do
        YARDSTICK_PARTS=mamba3 YARDSTICK_M3_AUTOTUNE=reduced timeout $(tmo 120) python3 benchmarks/gpu/yardstick.py "$R/yardstick-m3-$i" > "$R/yardstick-m3-$i.log" 2>&1
        echo "yardstick m3 ($i) rc=$?"; grep -E "^Mamba-3 SISO (fwd|scan).*ours|pieces" "$R/yardstick-m3-$i.log" | cut -c1-300
    done
    job cupy_tests $(tmo 150) python3 -m pytest -q -rs -p no:cacheprovider backends/cuda_cupy/tests/test_pdl.py \
        backends/cuda_cupy/tests/test_gpu.py -k "pdl or norm or graph or decode or gemv or linear"
    job tt_tests $(tmo 200) env TRITON_INTERPRET=0 python3 -m pytest -q -rs -p no:cacheprovider \
        backends/torch_triton/tests/test_ssd_mamba3_kernels.py -k mamba3
    job tt_cert_float32 $(tmo 200) mamba-conformance torch_triton -v --dtype float32 --only 'op:mamba3*' \
        --only 'mixer:mamba3*' --json "$R/torch_triton.gpu.s11a.float32.certificate.json"
    job cupy_cert $(tmo 260) mamba-conformance cuda_cupy -v --json "$R/cuda_cupy.gpu.s11a.certificate.json"
    SWEEP_M3_R=4 SWEEP_M3_FWD=8:4:-:32,32:8:-:64,32:4:-:32,16:4:-:32 SWEEP_M3=4:4:1,16:4:1,4:8:1,8:4:1 \
        timeout $(tmo 150) python3 benchmarks/gpu/sweep_tt.py "$R/m3sweep_mimo" --parts m3 --budget 140 > "$R/sweep_m3_mimo.log" 2>&1
    echo "sweep m3 MIMO bf16 rc=$?"; grep -E "m3 (fwd|bwd)|Mamba-3" "$R/sweep_m3_mimo.log" | cut -c1-200
    wait
    for w in cupy_tests tt_tests; do tail -n 3 "$R/$w.log" | cut -c1-300; grep -E "FAILED|Error" "$R/$w.log" | head -5 | cut -c1-300; done
    for w in tt_cert_float32 cupy_cert; do echo "$w: $(grep -cE " PASS" "$R/$w.log") PASS lines"; tail -n 2 "$R/$w.log" | cut -c1-300; grep -E "FAIL|ERROR" "$R/$w.log" | head -5 | cut -c1-300; done
    cat "$R/rc.txt"
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
s10c)
    # Session 10, last call. First, with the machine quiet: where the norm and conv rows' time
    # goes (host or device; launch_cost.py), cuda_cupy beside torch_triton. Then in the
    # background: the float32 Mamba-3 launch grids compiled (a process a config), the Mamba-3
    # GPU tests and certificate entries under the new defaults; then, the GPU alone: the float32
    # SISO and MIMO grids, the bf16 Mamba-3 yardstick (the forward's run-29 default), and the
    # float32 Mamba-3 bench rows, cuda_cupy beside torch_triton.
    results_dir
    DEADLINE=${DEADLINE:-540}
    timeout $(tmo 60) python3 benchmarks/gpu/launch_cost.py "$R/launch_cost" --rounds 5 > "$R/launch_cost.log" 2>&1
    echo "launch_cost rc=$?"; grep -vE "^round" "$R/launch_cost.log" | cut -c1-200
    for g in "1 fwd 16:4:-:32" "1 fwd 16:8:-:64" "1 fwd 16:8:-:32" "1 fwd 32:8:-:32" \
             "1 bwd 16:8:1:32" "1 bwd 16:16:1:32" "1 bwd 16:4:1:32" \
             "4 fwd 4:4:-:32" "4 fwd 4:8:-:64" "4 fwd 8:8:-:32" \
             "4 bwd 4:4:1:32" "4 bwd 4:8:1:32" "4 bwd 4:16:1:32"; do
        set -- $g
        # each process compiles its config and one cheap config of the other direction
        if [ "$1" = 1 ]; then fw=16:4:-:32; bw=16:8:1:32; else fw=4:4:-:32; bw=4:4:1:32; fi
        if [ "$2" = fwd ]; then fw=$3; else bw=$3; fi
        job "w32_r$1_$2_${3//[:-]/_}" $(tmo 240) env SWEEP_M3_DTYPE=float32 SWEEP_M3_R=$1 SWEEP_M3_FWD=$fw SWEEP_M3=$bw \
            SWEEP_M3_WARM=1 python3 benchmarks/gpu/sweep_tt.py "$R/w32" --parts m3 --budget 230
        W="${W:-} $!"
    done
    job bench_warm $(tmo 240) env GPU_CHECK_PARTS=bench GPU_CHECK_BENCH_BACKENDS=torch_triton GPU_CHECK_BENCH_OPS=mamba3_siso,mamba3_mimo \
        GPU_CHECK_BENCH_B=1 GPU_CHECK_BENCH_COMPILE_ONLY=1 python3 backends/cuda_cupy/gpu_check.py "$R/bench_warm"
    W="$W $!"
    job m3bf_warm $(tmo 240) env SWEEP_M3_FWD=32:4:-:32 SWEEP_M3=16:4:1 SWEEP_M3_WARM=1 python3 benchmarks/gpu/sweep_tt.py "$R/m3bf_warm" --parts m3 --budget 230
    W="$W $!"
    job tt_tests $(tmo 300) env TRITON_INTERPRET=0 python3 -m pytest -q -rs -p no:cacheprovider \
        backends/torch_triton/tests/test_ssd_mamba3_kernels.py -k mamba3
    for dt in bfloat16 float32; do
        job "tt_cert_$dt" $(tmo 320) mamba-conformance torch_triton -v --dtype $dt --only 'op:mamba3*' \
            --only 'mixer:mamba3*' --only 'lm:mamba3*' --json "$R/torch_triton.gpu.s10c.$dt.certificate.json"
    done
    wait $W  # the compiles (the tests and certificates go on beside the timings below)
    grep -hE "Error|error" "$R"/w32_*.log | head -5 | cut -c1-300
    for R_ in 1 4; do
        if [ "$R_" = 1 ]; then fw=16:4:-:32,16:8:-:64,16:8:-:32,32:8:-:32; bw=16:8:1:32,16:16:1:32,16:4:1:32
        else fw=4:4:-:32,4:8:-:64,8:8:-:32; bw=4:4:1:32,4:8:1:32,4:16:1:32; fi
        SWEEP_M3_DTYPE=float32 SWEEP_M3_R=$R_ SWEEP_M3_FWD=$fw SWEEP_M3=$bw timeout $(tmo 100) \
            python3 benchmarks/gpu/sweep_tt.py "$R/m3sweep32_r$R_" --parts m3 --budget 95 > "$R/sweep_m3_f32_r$R_.log" 2>&1
        echo "sweep m3 float32 R=$R_ rc=$?"; grep -E "m3 (fwd|bwd)|Mamba-3" "$R/sweep_m3_f32_r$R_.log" | cut -c1-200
    done
    YARDSTICK_PARTS=mamba3 YARDSTICK_M3_AUTOTUNE=reduced timeout $(tmo 130) python3 benchmarks/gpu/yardstick.py "$R/yardstick-m3" > "$R/yardstick-m3.log" 2>&1
    echo "yardstick m3 rc=$?"; grep -E "Mamba-|FAILED|pieces|rope_scan" "$R/yardstick-m3.log" | cut -c1-300
    GPU_CHECK_PARTS=bench GPU_CHECK_BENCH_OPS=mamba3_siso,mamba3_mimo timeout $(tmo 100) \
        python3 backends/cuda_cupy/gpu_check.py "$R/bench_m3" > "$R/bench_m3.log" 2>&1
    echo "bench m3 f32 rc=$?"; grep -E "cuda_cupy |torch_triton " "$R/bench_m3.log" | cut -c1-300
    wait
    tail -n 3 "$R/tt_tests.log" | cut -c1-300; grep -E "FAILED|Error" "$R/tt_tests.log" | head -5 | cut -c1-300
    for w in tt_cert_bfloat16 tt_cert_float32; do echo "$w: $(grep -cE " PASS" "$R/$w.log") PASS lines"; tail -n 2 "$R/$w.log" | cut -c1-300; grep -E "FAIL|ERROR" "$R/$w.log" | head -5 | cut -c1-300; done
    cat "$R/rc.txt"
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
s10b)
    # The Mamba-1 VJP: bf16 inputs run the float32 kernels (CONFIG "bwd": {"upcast": True}), whose
    # launch ("bwd_f32": "base" T=8 BE=32 4 warps, 5.2 ms) was never compared with the "tr"
    # kernels in float32 (in bf16 "tr" T=4 BE=16 was 7.79 against base's 8.24). The float32 VJP
    # grid, then the Mamba-1 yardstick (its "upcast": "outputs" row too) beside the official scan.
    results_dir
    DEADLINE=${DEADLINE:-560}
    job ss_build $(tmo 240) python3 benchmarks/gpu/build_official_ss.py .official /tmp/ss_build
    SWEEP_M1_DTYPE=float32 SWEEP_M1_FWD=tr_scan:8:8:1 \
        SWEEP_M1_BWD=base:8:32:4,tr:4:8:1,tr:4:16:1,tr:8:8:1,tr:4:32:1,tr:8:32:1,exp2:8:32:4,base:8:16:4,base:4:32:4 \
        timeout $(tmo 260) python3 benchmarks/gpu/sweep_tt.py "$R/m1sweep" --parts m1 --budget 250 > "$R/sweep_m1.log" 2>&1
    echo "sweep m1 rc=$?"; grep -E "Mamba-1|vjp|VJP" "$R/sweep_m1.log" | cut -c1-200
    wait
    [ -d /tmp/ss_build ] && YARDSTICK_PARTS=mamba1 timeout $(tmo 120) python3 benchmarks/gpu/yardstick.py "$R/yardstick-m1" > "$R/yardstick-m1.log" 2>&1 \
        && grep -E "Mamba-1" "$R/yardstick-m1.log" | cut -c1-300
    cat "$R/rc.txt"
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
s10a)
    # Next session's first call: sweep_tt's m3 grids (the forward and the backward's state
    # recompute with state rows a program, bp), each config compiled at B=1 in its own
    # background process, then timed in one process; then the Mamba-3 yardstick at the defaults.
    results_dir
    DEADLINE=${DEADLINE:-560}
    for cfg in -:-:-:32 32:8:-:32 32:4:-:32 -:-:-:16 32:8:-; do
        job "m3fwarm_${cfg//[:-]/_}" $(tmo 200) env SWEEP_M3_FWD=$cfg SWEEP_M3=16:4:1 SWEEP_M3_WARM=1 python3 benchmarks/gpu/sweep_tt.py "$R/m3warm" --parts m3 --budget 190
    done
    for cfg in 16:4:1:32 16:4:1:16 16:4:1:-:4 16:4:1:32:4 16:4:2 16:8:1 32:4:1; do
        job "m3warm_${cfg//[:-]/_}" $(tmo 200) env SWEEP_M3_FWD=-:-:- SWEEP_M3=$cfg SWEEP_M3_WARM=1 python3 benchmarks/gpu/sweep_tt.py "$R/m3warm" --parts m3 --budget 190
    done
    # the official Mamba-1 CUDA scan for the Mamba-1 rows at the end (~2 min, beside the compiles)
    job ss_build $(tmo 240) python3 benchmarks/gpu/build_official_ss.py .official /tmp/ss_build
    wait
    timeout $(tmo 90) python3 benchmarks/gpu/sweep_tt.py "$R/m3sweep" --parts m3 --budget 85 > "$R/sweep_m3.log" 2>&1
    echo "sweep m3 rc=$?"; grep -E "m3 (fwd|bwd)|Mamba-3" "$R/sweep_m3.log" | cut -c1-200
    YARDSTICK_PARTS=mamba3 YARDSTICK_M3_AUTOTUNE=reduced timeout $(tmo 150) python3 benchmarks/gpu/yardstick.py "$R/yardstick-m3" > "$R/yardstick-m3.log" 2>&1
    echo "yardstick m3 rc=$?"; grep -E "Mamba-|FAILED|pieces|rope_scan" "$R/yardstick-m3.log" | cut -c1-300
    # Mamba-1: the VJP's "upcast": "outputs" row beside the default (when the build above ended)
    [ -d /tmp/ss_build ] && YARDSTICK_PARTS=mamba1 timeout $(tmo 80) python3 benchmarks/gpu/yardstick.py "$R/yardstick-m1" > "$R/yardstick-m1.log" 2>&1 \
        && grep -E "Mamba-1" "$R/yardstick-m1.log" | cut -c1-300
    cat "$R/rc.txt"
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
s9c)
    # Every float32 row of gpu_check's bench (Mamba-1, SSD, Mamba-3 SISO and MIMO, gated norm,
    # add_rmsnorm, conv), cuda_cupy beside torch_triton at its defaults. torch_triton's float32
    # kernels (IEEE dots) compile slowly (SSD ~80 s, MIMO ~110 s forward + ~80 s VJP: runs 13,
    # 20, 27), so each of its rows is compiled in its own background process at B=1 while
    # cuda_cupy's rows are timed; then torch_triton's rows are timed from the warm cache. Run 27
    # timed them in one process and ran out of device budget compiling. Needs DEADLINE ~400.
    results_dir
    DEADLINE=${DEADLINE:-420}
    for row in selective_scan ssd_scan mamba3_siso mamba3_mimo rmsnorm_gated,add_rmsnorm,causal_conv1d; do
        job "tt_warm_${row%%,*}" $(tmo 260) env GPU_CHECK_PARTS=bench GPU_CHECK_BENCH_BACKENDS=torch_triton \
            GPU_CHECK_BENCH_OPS=$row GPU_CHECK_BENCH_B=1 GPU_CHECK_BENCH_COMPILE_ONLY=1 \
            python3 backends/cuda_cupy/gpu_check.py "$R/tt_warm_${row%%,*}"
    done
    # op:softplus re-certified (its kernel now calls selective_scan's _softplus; runs 24-25
    # certified the earlier formula)
    for dt in bfloat16 float32; do
        job "tt_cert_$dt" $(tmo 200) mamba-conformance torch_triton -v --dtype $dt --only 'op:softplus*' \
            --json "$R/torch_triton.gpu.s10.softplus.$dt.certificate.json"
    done
    GPU_CHECK_PARTS=bench GPU_CHECK_BENCH_BACKENDS=cuda_cupy timeout $(tmo 120) \
        python3 backends/cuda_cupy/gpu_check.py "$R/bench_cupy" > "$R/bench_cupy.log" 2>&1
    echo "bench cuda_cupy rc=$?"; grep -E "cuda_cupy " "$R/bench_cupy.log" | cut -c1-300
    wait
    grep -hE "ERROR" "$R"/tt_warm_*.log | head -5 | cut -c1-300
    GPU_CHECK_PARTS=bench GPU_CHECK_BENCH_BACKENDS=torch_triton timeout $(tmo $(( DEADLINE - 15 ))) \
        python3 backends/cuda_cupy/gpu_check.py "$R/bench_tt" > "$R/bench_tt.log" 2>&1
    echo "bench torch_triton rc=$?"; grep -E "torch_triton " "$R/bench_tt.log" | cut -c1-300
    for w in tt_cert_bfloat16 tt_cert_float32; do echo "$w: $(grep -cE " PASS" "$R/$w.log") PASS lines"; tail -n 2 "$R/$w.log" | cut -c1-300; grep -E "FAIL|ERROR" "$R/$w.log" | head -5 | cut -c1-300; done
    cat "$R/rc.txt"
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
s9b)
    # Session 9, last call: the defaults set from s9a (B/C kernels T=8 / 4 warps, angle scans in
    # 16 segments) and the new silu_gate op (the Mamba-3 gate, the gated MLP, Mamba-2's MLP
    # slice). Compiles and certificates in the background, then, with the GPU to itself, the
    # Mamba-3 yardstick and the float32 SISO benches.
    results_dir
    DEADLINE=${DEADLINE:-460}
    job tt_tests $(tmo 260) env TRITON_INTERPRET=0 python3 -m pytest -q -rs -p no:cacheprovider \
        backends/torch_triton/tests/test_activation_kernels.py backends/torch_triton/tests/test_mamba3_bc.py \
        backends/torch_triton/tests/test_rope_angles_kernels.py
    for dt in bfloat16 float32; do
        job "tt_cert_$dt" $(tmo 260) mamba-conformance torch_triton -v --dtype $dt --only 'op:silu_gate' \
            --only 'op:mamba3_angles' --only 'op:mamba3_rope_scan' --only 'mixer:*' --only 'lm:*' \
            --json "$R/torch_triton.gpu.s9b.$dt.certificate.json"
    done
    job cupy_cert $(tmo 200) mamba-conformance cuda_cupy -v --only 'op:silu_gate' --only 'mixer:*' --only 'lm:*' \
        --json "$R/cuda_cupy.gpu.s9b.certificate.json"
    job siso_ieee_warm $(tmo 260) env GPU_CHECK_PARTS=bench GPU_CHECK_BENCH_OPS=mamba3_siso GPU_CHECK_BENCH_BACKENDS=torch_triton \
        GPU_CHECK_BENCH_B=1 GPU_CHECK_BENCH_COMPILE_ONLY=1 python3 backends/cuda_cupy/gpu_check.py "$R/siso_ieee_warm"
    job siso_tf32x3_warm $(tmo 260) env MAMBA_TRITON_FP32_DOT=tf32x3 GPU_CHECK_PARTS=bench GPU_CHECK_BENCH_OPS=mamba3_siso \
        GPU_CHECK_BENCH_BACKENDS=torch_triton GPU_CHECK_BENCH_B=1 GPU_CHECK_BENCH_COMPILE_ONLY=1 python3 backends/cuda_cupy/gpu_check.py "$R/siso_tf32x3_warm"
    wait
    YARDSTICK_PARTS=mamba3 YARDSTICK_M3_AUTOTUNE=reduced timeout $(tmo 150) python3 benchmarks/gpu/yardstick.py "$R/yardstick-m3" > "$R/yardstick-m3.log" 2>&1
    echo "yardstick m3 rc=$?"; grep -E "Mamba-|FAILED|pieces|rope_scan" "$R/yardstick-m3.log" | cut -c1-300
    GPU_CHECK_PARTS=bench GPU_CHECK_BENCH_OPS=mamba3_siso timeout $(tmo 70) \
        python3 backends/cuda_cupy/gpu_check.py "$R/bench_ieee" > "$R/bench_ieee.log" 2>&1
    echo "bench ieee rc=$?"; grep -E "cuda_cupy|torch_triton" "$R/bench_ieee.log" | cut -c1-300
    MAMBA_TRITON_FP32_DOT=tf32x3 GPU_CHECK_PARTS=bench GPU_CHECK_BENCH_OPS=mamba3_siso GPU_CHECK_BENCH_BACKENDS=torch_triton \
        timeout $(tmo 50) python3 backends/cuda_cupy/gpu_check.py "$R/bench_tf32x3" > "$R/bench_tf32x3.log" 2>&1
    echo "bench tf32x3 rc=$?"; grep -E "torch_triton" "$R/bench_tf32x3.log" | cut -c1-300
    tail -n 3 "$R/tt_tests.log" | cut -c1-300; grep -E "FAILED|Error" "$R/tt_tests.log" | head -5 | cut -c1-300
    for w in tt_cert_bfloat16 tt_cert_float32 cupy_cert; do echo "$w: $(grep -cE " PASS" "$R/$w.log") PASS lines"; tail -n 2 "$R/$w.log" | cut -c1-300; grep -E "FAIL|ERROR" "$R/$w.log" | head -5 | cut -c1-300; done
    cat "$R/rc.txt"
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
s9a)
    # Session 9: the B/C prologue kernels with T, warps and heads per program as launch knobs
    # (swept), the angle scans split along L (swept), the Triton activations (silu, sigmoid, softplus and VJPs), the Mamba-3 VJP's
    # run-23 default (chunk 16, 4 warps, 1 stage). In the background (compiling, small
    # shapes): torch_triton GPU tests and certificate entries, the whole cuda_cupy certificate;
    # meanwhile the B/C sweep and the VJP grid; then, with the GPU to itself, the Mamba-3
    # yardstick under the B/C sweep's best launches.
    results_dir
    DEADLINE=${DEADLINE:-480}
    for cfg in 16:4:1 16:4:2 16:2:1 32:4:1; do
        job "m3warm_${cfg//[:-]/_}" $(tmo 150) env SWEEP_M3_FWD=-:-:- SWEEP_M3=$cfg SWEEP_M3_WARM=1 python3 benchmarks/gpu/sweep_tt.py "$R/m3warm" --parts m3 --budget 140
    done
    job tt_tests $(tmo 280) env TRITON_INTERPRET=0 python3 -m pytest -q -rs -p no:cacheprovider \
        backends/torch_triton/tests/test_activation_kernels.py backends/torch_triton/tests/test_mamba3_bc.py \
        backends/torch_triton/tests/test_mamba3_fused.py backends/torch_triton/tests/test_ssd_mamba3_kernels.py \
        backends/torch_triton/tests/test_rope_angles_kernels.py -k "mamba3 or bc or activ or rope"
    for dt in bfloat16 float32; do
        job "tt_cert_$dt" $(tmo 280) mamba-conformance torch_triton -v --dtype $dt --only 'op:silu*' \
            --only 'op:sigmoid*' --only 'op:softplus*' --only 'op:mamba3*' --only 'mixer:*' \
            --json "$R/torch_triton.gpu.s9.$dt.certificate.json"
    done
    job cupy_cert $(tmo 200) mamba-conformance cuda_cupy -v --json "$R/cuda_cupy.gpu.s9.certificate.json"
    timeout $(tmo 140) python3 benchmarks/gpu/sweep_tt.py "$R/bcsweep" --parts bc --budget 130 > "$R/sweep_bc.log" 2>&1
    echo "sweep bc rc=$?"; grep -E "  bc |(bc|bc_vjp|angles_fwd|angles_bwd) +best" "$R/sweep_bc.log" | cut -c1-200
    SWEEP_M3_FWD=-:-:- SWEEP_M3=16:4:1,16:4:2,16:2:1,32:4:1 timeout $(tmo 60) python3 benchmarks/gpu/sweep_tt.py "$R/m3sweep" --parts m3 --budget 55 > "$R/sweep_m3.log" 2>&1
    echo "sweep m3 rc=$?"; grep -E "m3 (fwd|bwd)|Mamba-3" "$R/sweep_m3.log" | cut -c1-200
    wait
    YARDSTICK_BC_SWEEP="$R/bcsweep/sweep_tt.json" YARDSTICK_PARTS=mamba3 YARDSTICK_M3_AUTOTUNE=reduced \
        timeout $(tmo 160) python3 benchmarks/gpu/yardstick.py "$R/yardstick-m3" > "$R/yardstick-m3.log" 2>&1
    echo "yardstick m3 rc=$?"; grep -E "Mamba-|FAILED|pieces|rope_scan|B/C" "$R/yardstick-m3.log" | cut -c1-300
    tail -n 3 "$R/tt_tests.log" | cut -c1-300; grep -E "FAILED|Error" "$R/tt_tests.log" | head -5 | cut -c1-300
    for w in tt_cert_bfloat16 tt_cert_float32 cupy_cert; do echo "$w: $(grep -cE " PASS" "$R/$w.log") PASS lines"; tail -n 2 "$R/$w.log" | cut -c1-300; grep -E "FAIL|ERROR" "$R/$w.log" | head -5 | cut -c1-300; done
    cat "$R/rc.txt"
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
s8b)
    # s8a without the cuda_cupy SISO benches (for a short device budget): the torch_triton
    # certificate entries in the background, the Mamba-3 yardstick, a 3-config VJP sweep.
    results_dir
    DEADLINE=${DEADLINE:-340}
    for cfg in 16:8:2 16:8:1 16:4:2; do
        job "m3warm_${cfg//[:-]/_}" $(tmo 200) env SWEEP_M3_FWD=-:-:- SWEEP_M3=$cfg SWEEP_M3_WARM=1 python3 benchmarks/gpu/sweep_tt.py "$R/m3warm" --parts m3 --budget 190
    done
    for cfg in 32:8:- 16:8:-; do
        job "m3fwarm_${cfg//[:-]/_}" $(tmo 200) env SWEEP_M3_FWD=$cfg SWEEP_M3=16:8:2 SWEEP_M3_WARM=1 python3 benchmarks/gpu/sweep_tt.py "$R/m3warm" --parts m3 --budget 190
    done
    # one process a dtype (they compile in parallel); -v prints each entry as it ends, so a
    # part cut by the deadline still shows what passed
    for dt in bfloat16 float32; do
        job "tt_cert_$dt" $(tmo $(( DEADLINE - 25 ))) mamba-conformance torch_triton -v --dtype $dt --only op:selective_scan \
            --only op:mamba3_scan --only op:mamba3_rope_scan --only 'mixer:mamba3*' --json "$R/torch_triton.gpu.s8.$dt.certificate.json"
    done
    YARDSTICK_PARTS=mamba3 YARDSTICK_M3_AUTOTUNE=reduced timeout $(tmo 150) python3 benchmarks/gpu/yardstick.py "$R/yardstick-m3" > "$R/yardstick-m3.log" 2>&1
    echo "yardstick m3 rc=$?"; grep -E "Mamba-|FAILED|pieces|rope_scan" "$R/yardstick-m3.log" | cut -c1-300
    SWEEP_M3_FWD=-:-:-,32:8:-,16:8:- SWEEP_M3=16:8:2,16:8:1,16:4:2 timeout $(tmo 40) python3 benchmarks/gpu/sweep_tt.py "$R/m3sweep" --parts m3 --budget 35 > "$R/sweep_m3.log" 2>&1
    echo "sweep m3 rc=$?"; grep -E "m3 (fwd|bwd)|Mamba-3" "$R/sweep_m3.log" | cut -c1-200
    wait
    for dt in bfloat16 float32; do tail -n 2 "$R/tt_cert_$dt.log" | cut -c1-300; grep -cE "PASS" "$R/tt_cert_$dt.log"; grep -E "FAIL|ERROR" "$R/tt_cert_$dt.log" | head -5 | cut -c1-300; done
    cat "$R/rc.txt"
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
s8a)
    # Session 8, second call: the Mamba-3 VJP at its new default (chunk 16, 8 warps, 2 stages,
    # 16-bit entering states, the reordered loop, gradients stored in the output dtype):
    # torch_triton's certificate entries for the scans and the Mamba-3 mixers (bf16, float32;
    # in the background, beside the timings: small shapes), the Mamba-3 yardstick with the
    # backward's pieces, the VJP sweep around the default, and cuda_cupy's float32 SISO beside
    # torch_triton's (default IEEE dots, then tf32x3), each compiled first in the background.
    results_dir
    DEADLINE=${DEADLINE:-560}
    for cfg in 16:8:2 16:8:1 16:4:2 16:4:1 16:8:3 32:8:1; do
        job "m3warm_${cfg//[:-]/_}" $(tmo 250) env SWEEP_M3_FWD=-:-:- SWEEP_M3=$cfg SWEEP_M3_WARM=1 python3 benchmarks/gpu/sweep_tt.py "$R/m3warm" --parts m3 --budget 240
    done
    for cfg in 32:8:- 16:8:- 32:8:2 16:8:2; do  # the forward's launches (CONFIG["fwd"])
        job "m3fwarm_${cfg//[:-]/_}" $(tmo 250) env SWEEP_M3_FWD=$cfg SWEEP_M3=16:8:2 SWEEP_M3_WARM=1 python3 benchmarks/gpu/sweep_tt.py "$R/m3warm" --parts m3 --budget 240
    done
    job siso_ieee_warm $(tmo 380) env GPU_CHECK_PARTS=bench GPU_CHECK_BENCH_OPS=mamba3_siso GPU_CHECK_BENCH_BACKENDS=torch_triton \
        GPU_CHECK_BENCH_B=1 GPU_CHECK_BENCH_COMPILE_ONLY=1 python3 backends/cuda_cupy/gpu_check.py "$R/siso_ieee_warm"
    job siso_tf32x3_warm $(tmo 380) env MAMBA_TRITON_FP32_DOT=tf32x3 GPU_CHECK_PARTS=bench GPU_CHECK_BENCH_OPS=mamba3_siso \
        GPU_CHECK_BENCH_BACKENDS=torch_triton GPU_CHECK_BENCH_B=1 GPU_CHECK_BENCH_COMPILE_ONLY=1 python3 backends/cuda_cupy/gpu_check.py "$R/siso_tf32x3_warm"
    for dt in bfloat16 float32; do
        job "tt_cert_$dt" $(tmo 520) mamba-conformance torch_triton -v --dtype $dt --only op:selective_scan \
            --only op:mamba3_scan --only op:mamba3_rope_scan --only 'mixer:mamba3*' --json "$R/torch_triton.gpu.s8.$dt.certificate.json"
    done
    # the compiled kernels' own tests (B/C kernels, the three rope_scan paths, the scan's VJP launches)
    job tt_m3_tests $(tmo 400) env TRITON_INTERPRET=0 python3 -m pytest -q -rs -p no:cacheprovider \
        backends/torch_triton/tests/test_mamba3_bc.py backends/torch_triton/tests/test_mamba3_fused.py \
        backends/torch_triton/tests/test_ssd_mamba3_kernels.py -k "mamba3 or bc"
    # the Mamba-3 mixers' training pass now runs cuda_cupy's mamba3_rope_scan_vjp
    job cupy_cert $(tmo 200) mamba-conformance cuda_cupy -v --only op:mamba3_rope_scan --only 'mixer:mamba3*' \
        --json "$R/cuda_cupy.gpu.s8.certificate.json"
    YARDSTICK_PARTS=mamba3 YARDSTICK_M3_AUTOTUNE=reduced timeout $(tmo 150) python3 benchmarks/gpu/yardstick.py "$R/yardstick-m3" > "$R/yardstick-m3.log" 2>&1
    echo "yardstick m3 rc=$?"; grep -E "Mamba-|FAILED|pieces|rope_scan" "$R/yardstick-m3.log" | cut -c1-300
    timeout $(tmo 60) python3 benchmarks/gpu/sweep_tt.py "$R/m3sweep" --parts m3 --budget 55 > "$R/sweep_m3.log" 2>&1
    echo "sweep m3 rc=$?"; grep -E "m3 (fwd|bwd)|Mamba-3" "$R/sweep_m3.log" | cut -c1-200
    for w in siso_ieee siso_tf32x3; do grep -E "torch_triton|ERROR" "$R/${w}_warm.log" | cut -c1-300; done
    GPU_CHECK_PARTS=bench GPU_CHECK_BENCH_OPS=mamba3_siso timeout $(tmo 70) \
        python3 backends/cuda_cupy/gpu_check.py "$R/bench_ieee" > "$R/bench_ieee.log" 2>&1
    echo "bench ieee rc=$?"; grep -E "cuda_cupy|torch_triton" "$R/bench_ieee.log" | cut -c1-300
    MAMBA_TRITON_FP32_DOT=tf32x3 GPU_CHECK_PARTS=bench GPU_CHECK_BENCH_OPS=mamba3_siso GPU_CHECK_BENCH_BACKENDS=torch_triton \
        timeout $(tmo 50) python3 backends/cuda_cupy/gpu_check.py "$R/bench_tf32x3" > "$R/bench_tf32x3.log" 2>&1
    echo "bench tf32x3 rc=$?"; grep -E "cuda_cupy|torch_triton" "$R/bench_tf32x3.log" | cut -c1-300
    wait
    for f in tt_cert_bfloat16 tt_cert_float32 cupy_cert tt_m3_tests; do tail -n 2 "$R/$f.log" | cut -c1-300; grep -E "FAIL|ERROR" "$R/$f.log" | head -5 | cut -c1-300; done
    cat "$R/rc.txt"
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
s7b)
    # Session 7, second call: the new Mamba-1 defaults (bf16 forward tr_fold T=16 BE=16, unmasked
    # chunks when T divides L, fast softplus/gate; the bf16 VJP through the float32 kernels) and
    # mamba3_rope_scan (the Mamba-3 scan with its B/C prologue fused in, and the mixer's forward
    # through it): torch_triton's GPU tests and certificate entries for both, the yardstick
    # (Mamba-1; Mamba-3 fused, separate, and where the time goes), cuda_cupy's SISO beside
    # torch_triton's opt-in tf32x3 dots (compiled in the background first), cuda_cupy's
    # certificate entries for the new op and the Mamba-3 models (whose forward now runs it).
    results_dir
    DEADLINE=${DEADLINE:-560}
    (timeout $(tmo 330) python3 benchmarks/gpu/build_official_ss.py .official /tmp/ss_build > "$R/ss_build.log" 2>&1; \
        echo "ss_build rc=$?" >> "$R/rc.txt") &
    SS_PID=$!
    job siso_warm $(tmo 400) env MAMBA_TRITON_FP32_DOT=tf32x3 GPU_CHECK_PARTS=bench GPU_CHECK_BENCH_OPS=mamba3_siso \
        GPU_CHECK_BENCH_BACKENDS=torch_triton GPU_CHECK_BENCH_B=1 GPU_CHECK_BENCH_COMPILE_ONLY=1 python3 backends/cuda_cupy/gpu_check.py "$R/siso_warm"
    SISO_PID=$!
    # the Mamba-3 VJP launch grid (sweep_tt.py m3), compiled one process a config at B=1
    for cfg in -:8:- 32:8:- 16:8:- 32:8:2 16:8:2 32:16:- 16:16:- -:16:-; do
        job "m3warm_${cfg//[:-]/_}" $(tmo 300) env SWEEP_M3=$cfg SWEEP_M3_WARM=1 python3 benchmarks/gpu/sweep_tt.py "$R/m3warm" --parts m3 --budget 280
    done
    # (the pytest GPU tests of run 20 were dropped here for device time: the certificate entries
    # below check the same kernels against the reference, forward, step and gradient)
    MAMBA_TRITON_FUSED_ROPE_SCAN=1 timeout $(tmo 110) mamba-conformance torch_triton --dtype bfloat16 --dtype float32 --only op:selective_scan \
        --only op:mamba3_rope_scan --only 'mixer:mamba3*' \
        --json "$R/torch_triton.gpu.s7.certificate.json" > "$R/tt_cert.log" 2>&1
    echo "tt_cert rc=$?"; tail -n 3 "$R/tt_cert.log" | cut -c1-300; grep -E "FAIL|ERROR" "$R/tt_cert.log" | head | cut -c1-300
    YARDSTICK_PARTS=mamba3 YARDSTICK_M3_AUTOTUNE=reduced timeout $(tmo 130) python3 benchmarks/gpu/yardstick.py "$R/yardstick-m3" > "$R/yardstick-m3.log" 2>&1
    echo "yardstick m3 rc=$?"; grep -E "Mamba-|FAILED|pieces|rope_scan" "$R/yardstick-m3.log" | cut -c1-250
    wait $SS_PID; tail -n 1 "$R/ss_build.log" | cut -c1-300
    YARDSTICK_PARTS=mamba1 timeout $(tmo 80) python3 benchmarks/gpu/yardstick.py "$R/yardstick-m1" > "$R/yardstick-m1.log" 2>&1
    echo "yardstick m1 rc=$?"; grep -E "Mamba-|FAILED" "$R/yardstick-m1.log" | cut -c1-250
    timeout $(tmo 60) mamba-conformance cuda_cupy --only op:mamba3_rope_scan --only 'mixer:mamba3*' \
        --json "$R/cuda_cupy.gpu.s7.certificate.json" > "$R/cupy_cert.log" 2>&1
    echo "cupy_cert rc=$?"; tail -n 2 "$R/cupy_cert.log" | cut -c1-300
    wait $SISO_PID; grep -E "torch_triton|ERROR" "$R/siso_warm.log" | cut -c1-300
    MAMBA_TRITON_FP32_DOT=tf32x3 GPU_CHECK_PARTS=bench GPU_CHECK_BENCH_OPS=mamba3_siso timeout $(tmo 90) \
        python3 backends/cuda_cupy/gpu_check.py "$R/bench" > "$R/bench.log" 2>&1
    echo "bench rc=$?"; grep -E "cuda_cupy|torch_triton" "$R/bench.log" | cut -c1-300
    timeout $(tmo 60) python3 benchmarks/gpu/sweep_tt.py "$R/m3sweep" --parts m3 --budget 55 > "$R/sweep_m3.log" 2>&1
    echo "sweep m3 rc=$?"; grep -E "m3 (fwd|bwd)|Mamba-3" "$R/sweep_m3.log" | cut -c1-200
    cat "$R/rc.txt"
    (cd "$HOME/.triton" && tar -czf "$OUT/triton_cache.tgz" cache) 2>/dev/null
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
s7a)
    # Session 7, first call. In the background from the start: the official Mamba-1 CUDA scan
    # built from .official (benchmarks/gpu/build_official_ss.py) and torch_triton's float32
    # Mamba-3 MIMO kernels compiled at B=1 (the kernels do not take B: the B=8 rows then hit the
    # cache). In front: the cuda_cupy PDL/GEMV/mixer GPU tests (the review commit 6d7567d was
    # never run on a GPU), torch_triton's Mamba-1 kernels on the GPU (the "tr_fold" variant among
    # them), the Mamba-1 forward sweep in bf16 and float32, the Mamba-1 yardstick under the bf16
    # sweep's best configs, then MIMO and SISO side by side (cuda_cupy, torch_triton).
    results_dir
    DEADLINE=${DEADLINE:-560}
    (timeout $(tmo 330) python3 benchmarks/gpu/build_official_ss.py .official /tmp/ss_build > "$R/ss_build.log" 2>&1; \
        echo "ss_build rc=$?" >> "$R/rc.txt") &
    SS_PID=$!
    job mimo_warm $(tmo 450) env GPU_CHECK_PARTS=bench GPU_CHECK_BENCH_OPS=mamba3_mimo GPU_CHECK_BENCH_BACKENDS=torch_triton \
        GPU_CHECK_BENCH_B=1 GPU_CHECK_BENCH_COMPILE_ONLY=1 python3 backends/cuda_cupy/gpu_check.py "$R/mimo_warm"
    MIMO_PID=$!
    timeout $(tmo 150) python3 -m pytest -q -rs -p no:cacheprovider backends/cuda_cupy/tests/test_pdl.py \
        backends/cuda_cupy/tests/test_mixer_steps_gpu.py > "$R/cupy_tests.log" 2>&1
    echo "cupy_tests rc=$?"; tail -n 2 "$R/cupy_tests.log" | cut -c1-300; grep -E "^(FAILED|ERROR)" "$R/cupy_tests.log" | head | cut -c1-300
    TRITON_INTERPRET=0 timeout $(tmo 100) python3 -m pytest -q -p no:cacheprovider \
        backends/torch_triton/tests/test_m1_norm_conv_kernels.py -k "transposed" > "$R/tt_m1_tests.log" 2>&1
    echo "tt_m1_tests rc=$?"; tail -n 2 "$R/tt_m1_tests.log" | cut -c1-300; grep -E "^(FAILED|ERROR)" "$R/tt_m1_tests.log" | head | cut -c1-300
    SWEEP_M1_FWD="tr_scan:8:8:1,tr_fold:8:8:1,tr_fold:4:8:1,tr_fold:16:8:1,tr_fold:8:16:1,tr_fold:16:16:1,tr_scan:16:16:1" \
        SWEEP_M1_BWD="tr:4:16:1" timeout $(tmo 70) python3 benchmarks/gpu/sweep_tt.py "$R/sweep" --parts m1 --budget 60 > "$R/sweep_tt.log" 2>&1
    echo "sweep rc=$?"; grep -E "m1 (fwd|vjp)" "$R/sweep_tt.log" | cut -c1-200
    SWEEP_M1_DTYPE=float32 SWEEP_M1_FWD="tr_scan:8:8:1,tr_fold:8:8:1,tr_fold:4:8:1,tr_fold:16:8:1" \
        SWEEP_M1_BWD="base:8:32:4" timeout $(tmo 50) python3 benchmarks/gpu/sweep_tt.py "$R/sweep32" --parts m1 --budget 40 > "$R/sweep_tt-f32.log" 2>&1
    echo "sweep32 rc=$?"; grep -E "m1 (fwd|vjp)" "$R/sweep_tt-f32.log" | cut -c1-200
    wait $SS_PID; tail -n 2 "$R/ss_build.log" | cut -c1-300
    YARDSTICK_PARTS=mamba1 YARDSTICK_M1_SWEEP="$R/sweep/sweep_tt.json" timeout $(tmo 80) python3 benchmarks/gpu/yardstick.py "$R/yardstick" > "$R/yardstick-mamba1.log" 2>&1
    echo "yardstick rc=$?"; grep -E "Mamba-1|FAILED" "$R/yardstick-mamba1.log" | cut -c1-250
    wait $MIMO_PID; grep -E "torch_triton|ERROR" "$R/mimo_warm.log" | cut -c1-300
    GPU_CHECK_PARTS=bench GPU_CHECK_BENCH_OPS=mamba3_mimo,mamba3_siso timeout $(tmo 120) python3 backends/cuda_cupy/gpu_check.py "$R/bench" > "$R/bench.log" 2>&1
    echo "bench rc=$?"; grep -E "cuda_cupy|torch_triton" "$R/bench.log" | cut -c1-300
    cat "$R/rc.txt"
    (cd "$HOME/.triton" && tar -czf "$OUT/triton_cache.tgz" cache) 2>/dev/null
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
s6a)
    # Session 6, first call: programmatic dependent launch (_launch.py) for the GEMV, the norm
    # forward and the fused Mamba-2 step: its tests and the fused step's, then decode with and
    # without it beside torch_triton (one process), then the kernels alone; the NVRTC and Triton caches come back for a later call.
    # PDL on for everything (its default was off until this part certified and timed it: run 16).
    results_dir
    export MAMBA_CUPY_PDL=1
    DEADLINE=${DEADLINE:-550}
    job cupy_tests $(tmo $(( DEADLINE / 2 ))) python3 -m pytest -q -rs -p no:cacheprovider backends/cuda_cupy/tests/test_pdl.py \
        backends/cuda_cupy/tests/test_mixer_steps_gpu.py backends/cuda_cupy/tests/test_gpu.py \
        -k "pdl or mixer or fused or linear or gemv or norm or graph or decode or step"
    job cupy_conf $(tmo $(( DEADLINE / 2 ))) env GPU_CHECK_PARTS=conformance python3 backends/cuda_cupy/gpu_check.py "$R/cupy_conf"
    wait; cat "$R/rc.txt"; for f in "$R"/*.log; do echo "== $f"; tail -n 3 "$f" | cut -c1-300; done
    grep -E "^(FAILED|ERROR)" "$R/cupy_tests.log" | head | cut -c1-300
    GPU_CHECK_PARTS=decode timeout $(tmo 200) python3 backends/cuda_cupy/gpu_check.py "$R/decode" > "$R/decode.log" 2>&1
    echo "decode rc=$?"; grep -E "decode|Error" "$R/decode.log" | cut -c1-400
    timeout $(tmo 90) python3 benchmarks/gpu/check_mixer_step.py "$R/mixer_step" > "$R/check_mixer_step.log" 2>&1
    echo "check_mixer_step rc=$?"; grep -vE "PASS$" "$R/check_mixer_step.log" | cut -c1-300 | tail -n 30
    (cd "$HOME/.cupy" && tar -czf "$OUT/cupy_cache.tgz" kernel_cache) 2>/dev/null
    (cd "$HOME/.triton" && tar -czf "$OUT/triton_cache.tgz" cache) 2>/dev/null
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
s5f)
    # Session 5, last call: the final code: every cuda_cupy GPU test and its certificate, then
    # norms and conv beside torch_triton, decode beside torch_triton.
    results_dir
    DEADLINE=${DEADLINE:-560}
    job cupy_tests $(tmo 330) python3 -m pytest -q -rs -p no:cacheprovider backends/cuda_cupy/tests/
    job cupy_conf $(tmo 330) env GPU_CHECK_PARTS=conformance python3 backends/cuda_cupy/gpu_check.py "$R/cupy_conf"
    wait; cat "$R/rc.txt"; for f in "$R"/*.log; do echo "== $f"; tail -n 3 "$f" | cut -c1-300; done
    grep -E "^(FAILED|ERROR)" "$R/cupy_tests.log" | head | cut -c1-200
    GPU_CHECK_PARTS=bench GPU_CHECK_BENCH_OPS=rmsnorm_gated,add_rmsnorm,causal_conv1d \
        timeout $(tmo 100) python3 backends/cuda_cupy/gpu_check.py "$R/bench" > "$R/bench.log" 2>&1
    echo "bench rc=$?"; grep -E "cuda_cupy|torch_triton" "$R/bench.log" | cut -c1-300
    GPU_CHECK_PARTS=decode timeout $(tmo 90) python3 backends/cuda_cupy/gpu_check.py "$R/decode" > "$R/decode.log" 2>&1
    echo "decode rc=$?"; grep -E "decode" "$R/decode.log" | cut -c1-300
    timeout $(tmo 60) python3 benchmarks/gpu/check_mixer_step.py "$R/mixer_step" > "$R/check_mixer_step.log" 2>&1
    echo "check_mixer_step rc=$?"; grep -E "^ +(1|16) |linear|mamba2_step" "$R/check_mixer_step.log" | cut -c1-300
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
s5e)
    # Session 5, fifth call: the L2 prefetch removed (slower: 1.305 against 1.256 ms/token), the
    # GEMV at one or two rows loads its x while the weights are in flight: tests, decode beside
    # torch_triton, the kernels alone.
    results_dir
    DEADLINE=${DEADLINE:-560}
    job cupy_tests $(tmo 300) python3 -m pytest -q -rs -p no:cacheprovider backends/cuda_cupy/tests/test_mixer_steps_gpu.py \
        backends/cuda_cupy/tests/test_gpu.py -k "linear or gemv or graph or decode or step or mixer"
    wait; cat "$R/rc.txt"; tail -n 2 "$R/cupy_tests.log" | cut -c1-300; grep -E "^(FAILED|ERROR)" "$R/cupy_tests.log" | head | cut -c1-200
    timeout $(tmo 120) python3 benchmarks/gpu/check_mixer_step.py "$R/mixer_step" > "$R/check_mixer_step.log" 2>&1
    echo "check_mixer_step rc=$?"; grep -vE "PASS$" "$R/check_mixer_step.log" | cut -c1-300 | tail -n 22
    GPU_CHECK_PARTS=decode timeout $(tmo 90) python3 backends/cuda_cupy/gpu_check.py "$R/decode" > "$R/decode.log" 2>&1
    echo "decode rc=$?"; grep -E "decode" "$R/decode.log" | cut -c1-300
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
s5d)
    # Session 5, fourth call: the whole-model decode step removed (slower: 1.37 against 1.25
    # ms/token), the fused step's L2 prefetch of out_proj's weights: tests, decode with and
    # without the prefetch, beside torch_triton.
    results_dir
    DEADLINE=${DEADLINE:-560}
    job cupy_tests $(tmo 300) python3 -m pytest -q -rs -p no:cacheprovider backends/cuda_cupy/tests/test_mixer_steps_gpu.py \
        backends/cuda_cupy/tests/test_gpu.py -k "linear or gemv or graph or decode or step or mixer"
    wait; cat "$R/rc.txt"; tail -n 2 "$R/cupy_tests.log" | cut -c1-300; grep -E "^(FAILED|ERROR)" "$R/cupy_tests.log" | head | cut -c1-200
    timeout $(tmo 120) python3 benchmarks/gpu/check_mixer_step.py "$R/mixer_step" > "$R/check_mixer_step.log" 2>&1
    echo "check_mixer_step rc=$?"; grep -vE "PASS$" "$R/check_mixer_step.log" | cut -c1-300 | tail -n 22
    MAMBA_CUPY_STEP_PREFETCH=0 timeout $(tmo 120) python3 benchmarks/gpu/check_mixer_step.py "$R/mixer_step_nopf" > "$R/check_mixer_step_nopf.log" 2>&1
    echo "check_mixer_step (MAMBA_CUPY_STEP_PREFETCH=0) rc=$?"; grep -E "^ +(1|16) |mamba2_step|out_proj" "$R/check_mixer_step_nopf.log" | cut -c1-300
    GPU_CHECK_PARTS=decode timeout $(tmo 90) python3 backends/cuda_cupy/gpu_check.py "$R/decode" > "$R/decode.log" 2>&1
    echo "decode rc=$?"; grep -E "decode" "$R/decode.log" | cut -c1-300
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
s5c)
    # Session 5, third call: the whole-model decode step (decode.py: every RMSNorm folded into a
    # projection, 3 launches a layer) and the GEMV back to its rounds of 8 (run s5b's rounds of
    # 16 were slower): GPU tests, certificate, decode with and without the fused LM step beside
    # torch_triton.
    results_dir
    DEADLINE=${DEADLINE:-560}
    job cupy_tests $(tmo 300) python3 -m pytest -q -rs -p no:cacheprovider backends/cuda_cupy/tests/test_decode_gpu.py \
        backends/cuda_cupy/tests/test_mixer_steps_gpu.py backends/cuda_cupy/tests/test_gpu.py -k "linear or gemv or graph or decode or step or mixer or epilogue"
    job cupy_conf $(tmo 300) env GPU_CHECK_PARTS=conformance python3 backends/cuda_cupy/gpu_check.py "$R/cupy_conf"
    wait; cat "$R/rc.txt"; for f in "$R"/*.log; do echo "== $f"; tail -n 3 "$f" | cut -c1-300; done
    grep -E "FAILED|Error" "$R/cupy_tests.log" | head -20 | cut -c1-300
    timeout $(tmo 120) python3 benchmarks/gpu/check_mixer_step.py "$R/mixer_step" > "$R/check_mixer_step.log" 2>&1
    echo "check_mixer_step rc=$?"; grep -vE "PASS$" "$R/check_mixer_step.log" | cut -c1-300 | tail -n 22
    MAMBA_CUPY_FUSED_LM=0 timeout $(tmo 120) python3 benchmarks/gpu/check_mixer_step.py "$R/mixer_step_nolm" > "$R/check_mixer_step_nolm.log" 2>&1
    echo "check_mixer_step (MAMBA_CUPY_FUSED_LM=0) rc=$?"; grep -E "^ +(1|16) " "$R/check_mixer_step_nolm.log" | cut -c1-300
    GPU_CHECK_PARTS=decode timeout $(tmo 90) python3 backends/cuda_cupy/gpu_check.py "$R/decode" > "$R/decode.log" 2>&1
    echo "decode rc=$?"; grep -E "decode" "$R/decode.log" | cut -c1-300
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
s5b)
    # Session 5, second call: the fused step without its ticket tail (the norm's division moved
    # into out_proj's GEMV, every load of the step issued at once), the GEMV's rounds of 16
    # vectors: their GPU tests and cuda_cupy's certificate, then decode timed beside
    # torch_triton, the kernels alone, and Mamba-3 MIMO on both backends.
    results_dir
    DEADLINE=${DEADLINE:-560}
    job cupy_tests $(tmo 300) python3 -m pytest -q -rs -p no:cacheprovider backends/cuda_cupy/tests/test_mixer_steps_gpu.py \
        backends/cuda_cupy/tests/test_gpu.py -k "linear or gemv or graph or decode or step or mixer"
    job cupy_conf $(tmo 300) env GPU_CHECK_PARTS=conformance python3 backends/cuda_cupy/gpu_check.py "$R/cupy_conf"
    wait; cat "$R/rc.txt"; for f in "$R"/*.log; do echo "== $f"; tail -n 3 "$f" | cut -c1-300; done
    timeout $(tmo 120) python3 benchmarks/gpu/check_mixer_step.py "$R/mixer_step" > "$R/check_mixer_step.log" 2>&1
    echo "check_mixer_step rc=$?"; grep -vE "PASS$" "$R/check_mixer_step.log" | cut -c1-300 | tail -n 30
    GPU_CHECK_PARTS=decode timeout $(tmo 90) python3 backends/cuda_cupy/gpu_check.py "$R/decode" > "$R/decode.log" 2>&1
    echo "decode rc=$?"; grep -E "decode" "$R/decode.log" | cut -c1-300
    GPU_CHECK_PARTS=bench GPU_CHECK_BENCH_OPS=mamba3_mimo \
        timeout $(tmo 200) python3 backends/cuda_cupy/gpu_check.py "$R/bench_mimo" > "$R/bench_mimo.log" 2>&1
    echo "bench mimo rc=$?"; grep -E "cuda_cupy|torch_triton" "$R/bench_mimo.log" | cut -c1-300
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
s5a)
    # Session 5, first call: the fused Mamba-2 decode step, the cp.async GEMV, the one-pass conv
    # backward and the fused add_rmsnorm backward (norm/conv "v2") checked (every cuda_cupy GPU
    # test, its certificate), then timed: norms and conv v2 beside torch_triton and v1; decode
    # fused and unfused beside torch_triton (gpu_check decode), the step kernel and GEMVs alone.
    results_dir
    DEADLINE=${DEADLINE:-560}
    job cupy_tests $(tmo 300) python3 -m pytest -q -rs -p no:cacheprovider backends/cuda_cupy/tests/
    job cupy_conf $(tmo 300) env GPU_CHECK_PARTS=conformance python3 backends/cuda_cupy/gpu_check.py "$R/cupy_conf"
    wait; cat "$R/rc.txt"; for f in "$R"/*.log; do echo "== $f"; tail -n 3 "$f" | cut -c1-300; done
    GPU_CHECK_PARTS=bench GPU_CHECK_BENCH_OPS=rmsnorm_gated,add_rmsnorm,causal_conv1d \
        timeout $(tmo 100) python3 backends/cuda_cupy/gpu_check.py "$R/bench" > "$R/bench.log" 2>&1
    echo "bench rc=$?"; grep -E "cuda_cupy|torch_triton" "$R/bench.log" | cut -c1-300
    # (the v1 kernels this compared were deleted after the session; the part records run 1)
    MAMBA_CUPY_NORM=v1 MAMBA_CUPY_CONV=v1 GPU_CHECK_PARTS=bench GPU_CHECK_BENCH_BACKENDS=cuda_cupy \
        GPU_CHECK_BENCH_OPS=rmsnorm_gated,add_rmsnorm,causal_conv1d \
        timeout $(tmo 60) python3 backends/cuda_cupy/gpu_check.py "$R/bench_v1" > "$R/bench_v1.log" 2>&1
    echo "bench v1 rc=$?"; grep -E "cuda_cupy" "$R/bench_v1.log" | cut -c1-300
    GPU_CHECK_PARTS=decode timeout $(tmo 90) python3 backends/cuda_cupy/gpu_check.py "$R/decode" > "$R/decode.log" 2>&1
    echo "decode rc=$?"; grep -E "decode" "$R/decode.log" | cut -c1-300
    timeout $(tmo 120) python3 benchmarks/gpu/check_mixer_step.py "$R/mixer_step" > "$R/check_mixer_step.log" 2>&1
    echo "check_mixer_step rc=$?"; cut -c1-300 "$R/check_mixer_step.log" | tail -n 60
    (cd "$HOME/.cupy" && tar -czf "$OUT/cupy_cache.tgz" kernel_cache) 2>/dev/null
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
round3)
    # Everything of one session's last call: correctness jobs in parallel (nothing timed), then the
    # timings one at a time on the idle GPU. Each job has its own timeout; results in results.tgz.
    results_dir
    [ -d .whl_hf ] && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site_hf .whl_hf/*.whl
    if [ -f .official/build_ss.py ]; then (timeout 280 python3 .official/build_ss.py > "$R/ss_build.log" 2>&1 &); fi
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
    results_dir
    (GPU_CHECK_PARTS=compile,kernels timeout 150 python3 backends/cuda_cupy/gpu_check.py "$R/cupy_kernels" \
        > "$R/cupy_kernels.log" 2>&1; echo "cupy kernels rc=$?" >> "$R/rc.txt") &
    YARDSTICK_PARTS=mamba3 YARDSTICK_M3_AUTOTUNE=reduced timeout 300 python3 benchmarks/gpu/yardstick.py "$R/yd" \
        > "$R/yardstick_m3.log" 2>&1; echo "yardstick m3 rc=$?"; grep -E "ratio|FAILED|\] " "$R/yardstick_m3.log"
    wait; cat "$R/rc.txt"; grep -E "max|rel|FAIL|Error" "$R/cupy_kernels.log" | tail -n 30
    GPU_CHECK_PARTS=bench,decode timeout 190 python3 backends/cuda_cupy/gpu_check.py "$R/bench" > "$R/bench.log" 2>&1
    echo "bench rc=$?"; grep -E "cuda_cupy|torch_triton|decode" "$R/bench.log" | cut -c1-400
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
kernels2)
    # New kernels of the 2026-11-23 evening session: correctness on the GPU in parallel (compiled
    # Triton, not the interpreter; the new CuPy kernels), then timings one at a time: the Mamba-1
    # sweep (with the "tr" variant), the yardstick under the sweep's best configs, the cuda_cupy
    # bench under its new kernels, torch_triton's float32 rows beside it.
    # Every step's timeout is cut to what is left of a 560 s deadline (SECONDS counts from the
    # script's start), so results.tgz is always written inside the device's 600 s call.
    results_dir
    DEADLINE=${DEADLINE:-560}
    if [ -f .official/build_ss.py ]; then (timeout 280 python3 .official/build_ss.py > "$R/ss_build.log" 2>&1 &); fi
    job cupy_tests $(tmo 150) python3 -m pytest -q -rs -p no:cacheprovider backends/cuda_cupy/tests/test_gpu.py
    job cupy_kernels $(tmo 150) env GPU_CHECK_PARTS=kernels python3 backends/cuda_cupy/gpu_check.py "$R/cupy_kernels"
    job tt_kernels $(tmo 150) env TRITON_INTERPRET=0 python3 -m pytest -q -p no:cacheprovider \
        backends/torch_triton/tests/test_m1_norm_conv_kernels.py backends/torch_triton/tests/test_rope_angles_kernels.py
    job tt_m3_conf $(tmo 150) mamba-conformance torch_triton --dtype float32 --only 'op:apply_rope*' \
        --only 'op:mamba3_angles*' --only 'mixer:*' -q --json "$R/tt_conf_f32.json"
    wait; cat "$R/rc.txt"; for f in "$R"/*.log; do echo "== $f"; tail -n 3 "$f" | cut -c1-300; done
    timeout $(tmo 110) python3 benchmarks/gpu/sweep_tt.py "$R/sweep" --parts m1 --budget 90 > "$R/sweep_tt.log" 2>&1
    echo "sweep rc=$?"; tail -n 12 "$R/sweep_tt.log"
    for i in $(seq 1 30); do ls /tmp/ss_build/selective_scan_cuda*.so > /dev/null 2>&1 && break; sleep 2; done
    YARDSTICK_M1_SWEEP="$R/sweep/sweep_tt.json" YARDSTICK_PARTS=mamba1,mamba3 YARDSTICK_M3_AUTOTUNE=reduced \
        timeout $(tmo 100) python3 benchmarks/gpu/yardstick.py "$R/yd" > "$R/yardstick.log" 2>&1
    echo "yardstick rc=$?"; grep -E "ratio|FAILED" "$R/yardstick.log"
    GPU_CHECK_PARTS=bench,decode GPU_CHECK_TT_OPS=mamba3_siso,mamba3_mimo,rmsnorm_gated,add_rmsnorm,causal_conv1d,ssd_scan \
        timeout $(tmo 200) python3 backends/cuda_cupy/gpu_check.py "$R/bench" > "$R/bench.log" 2>&1
    echo "bench rc=$?"; grep -E "cuda_cupy|torch_triton|decode" "$R/bench.log" | cut -c1-300
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
certify2)
    # The session's last call: certificates under the new defaults (torch_triton: native rope and
    # angles, tf32x3 float32 dots, Mamba-1 "tr_scan" forward; cuda_cupy: dedicated Mamba-1 and
    # chunked row-scan kernels) and the GPU tests, in parallel; then timings, most wanted first,
    # each cut to what is left of the deadline.
    results_dir
    DEADLINE=${DEADLINE:-545}
    if [ -f .official/build_ss.py ]; then (timeout 280 python3 .official/build_ss.py > "$R/ss_build.log" 2>&1 &); fi
    for dt in float32 bfloat16; do
        job "tt_${dt}_ops" $(tmo 250) mamba-conformance torch_triton --dtype $dt --only 'op:*' -q \
            --json "$R/torch_triton.gpu.ops.$dt.certificate.json"
        job "tt_${dt}_models" $(tmo 250) mamba-conformance torch_triton --dtype $dt --only 'mixer:*' --only 'lm:*' -q \
            --json "$R/torch_triton.gpu.models.$dt.certificate.json"
    done
    job cupy_conf $(tmo 250) env GPU_CHECK_PARTS=conformance python3 backends/cuda_cupy/gpu_check.py "$R/cupy_conf"
    job tt_tests $(tmo 250) env TRITON_INTERPRET=0 python3 -m pytest -q -p no:cacheprovider \
        backends/torch_triton/tests/test_m1_norm_conv_kernels.py backends/torch_triton/tests/test_rope_angles_kernels.py \
        backends/torch_triton/tests/test_ssd_chunk_cap.py backends/torch_triton/tests/test_mixer_steps.py
    wait; cat "$R/rc.txt"; for f in "$R"/*.log; do echo "== $f"; tail -n 2 "$f" | cut -c1-300; done
    GPU_CHECK_PARTS=bench GPU_CHECK_BENCH_BACKENDS=torch_triton \
        GPU_CHECK_BENCH_OPS=mamba3_siso,ssd_scan,selective_scan,mamba3_mimo \
        timeout $(tmo 120) python3 backends/cuda_cupy/gpu_check.py "$R/bench_tt" > "$R/bench_tt.log" 2>&1
    echo "bench tt rc=$?"; grep -E "torch_triton" "$R/bench_tt.log" | cut -c1-300
    GPU_CHECK_PARTS=decode timeout $(tmo 100) python3 backends/cuda_cupy/gpu_check.py "$R/decode" > "$R/decode.log" 2>&1
    echo "decode rc=$?"; grep -E "decode" "$R/decode.log" | cut -c1-300
    YARDSTICK_PARTS=mamba1 timeout $(tmo 80) python3 benchmarks/gpu/yardstick.py "$R/yd" > "$R/yardstick.log" 2>&1
    echo "yardstick rc=$?"; grep -E "ratio|FAILED" "$R/yardstick.log"
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
fp32fix)
    # After certify2's float32 model run hit an illegal address in the Mamba-3 mixers' backward
    # (first at mixer:mamba3 chunk>L grad): the float32 models certified with IEEE dots (the
    # earlier default), the same Mamba-3 entries with tf32x3 under CUDA_LAUNCH_BLOCKING=1 (where
    # it faults), and the GPU tests mended after certify2.
    results_dir
    job tt_f32_models_ieee 230 env MAMBA_TRITON_FP32_DOT=ieee mamba-conformance torch_triton --dtype float32 \
        --only 'mixer:*' --only 'lm:*' -q --json "$R/torch_triton.gpu.models.float32.certificate.json"
    job m3_tf32x3 230 env CUDA_LAUNCH_BLOCKING=1 mamba-conformance torch_triton --dtype float32 \
        --only 'mixer:mamba3*' -q --json "$R/m3_tf32x3.json"
    job m3_tf32x3_fwd 230 env CUDA_LAUNCH_BLOCKING=1 mamba-conformance torch_triton --dtype float32 \
        --only 'mixer:mamba3*' --mode forward --mode step -q --json "$R/m3_tf32x3_fwd.json"
    job tt_tests 230 env TRITON_INTERPRET=0 python3 -m pytest -q -p no:cacheprovider \
        backends/torch_triton/tests/test_m1_norm_conv_kernels.py backends/torch_triton/tests/test_mixer_steps.py
    wait; cat "$R/rc.txt"; for f in "$R"/*.log; do echo "== $f"; tail -n 2 "$f" | cut -c1-300; done
    python3 - "$R/m3_tf32x3.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for e in d["entries"]:
    if e["verdict"] == "ERROR":
        print(e["check"], e["case"], e["mode"]); print("\n".join(e.get("where") or [])); print((e.get("traceback") or "")[-1500:]); break
PY
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
round4)
    # Session of 2026-11-23 (night), first call: cuda_cupy's tiled row scan checked on the GPU
    # (its tests against the chunked kernel and the NumPy emulation, every scan op against the
    # float64 reference under each kernel), then timings one at a time: where the SSD/Mamba-3
    # time goes per kernel (bench_cupy_scan.py), the Mamba-1 sweep with BE < 32 "tr" configs,
    # torch_triton's float32 SSD row under its default (IEEE) dots.
    results_dir
    DEADLINE=${DEADLINE:-560}
    job cupy_tiled $(tmo 170) python3 -m pytest -q -x -rs -p no:cacheprovider backends/cuda_cupy/tests/test_gpu.py \
        -k "tiled or scan_ops"
    job cupy_kernels $(tmo 170) env GPU_CHECK_PARTS=kernels python3 backends/cuda_cupy/gpu_check.py "$R/cupy_kernels"
    wait; cat "$R/rc.txt"; for f in "$R"/*.log; do echo "== $f"; tail -n 4 "$f" | cut -c1-400; done
    timeout $(tmo 150) python3 benchmarks/gpu/bench_cupy_scan.py "$R/scan" --budget 140 > "$R/bench_cupy_scan.log" 2>&1
    echo "bench_cupy_scan rc=$?"; cat "$R/bench_cupy_scan.log" | cut -c1-300
    timeout $(tmo 110) python3 benchmarks/gpu/sweep_tt.py "$R/sweep" --parts m1 --budget 95 > "$R/sweep_tt.log" 2>&1
    echo "sweep rc=$?"; grep -E "m1|best" "$R/sweep_tt.log" | tail -n 30
    GPU_CHECK_PARTS=bench GPU_CHECK_BENCH_BACKENDS=torch_triton GPU_CHECK_BENCH_OPS=ssd_scan \
        timeout $(tmo 150) python3 backends/cuda_cupy/gpu_check.py "$R/tt_ssd_f32" > "$R/tt_ssd_f32.log" 2>&1
    echo "tt ssd f32 rc=$?"; grep -E "torch_triton" "$R/tt_ssd_f32.log" | cut -c1-300
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
round5)
    # Second call: the tiled decay gradient and the float32 tiled plan checked on the GPU, then
    # timings: the SSD/Mamba-3 pieces and ops under the tiled kernels, Mamba-1 configs around
    # round4's best (bf16 forward and VJP, then the float32 forward), torch_triton's float32 SSD.
    results_dir
    DEADLINE=${DEADLINE:-560}
    job cupy_tiled $(tmo 170) python3 -m pytest -q -rs -p no:cacheprovider backends/cuda_cupy/tests/test_gpu.py \
        -k "tiled or scan_ops or decay"
    job cupy_kernels $(tmo 170) env GPU_CHECK_PARTS=kernels python3 backends/cuda_cupy/gpu_check.py "$R/cupy_kernels"
    wait; cat "$R/rc.txt"; for f in "$R"/*.log; do echo "== $f"; tail -n 4 "$f" | cut -c1-400; done
    BENCH_SCAN_KINDS=tiled BENCH_SCAN_PLANS="npt=4,rp=8;npt=8,rp=4;npt=2,rp=8" \
        timeout $(tmo 110) python3 benchmarks/gpu/bench_cupy_scan.py "$R/scan" --budget 100 > "$R/bench_cupy_scan.log" 2>&1
    echo "bench_cupy_scan rc=$?"; cut -c1-300 "$R/bench_cupy_scan.log"
    SWEEP_M1_FWD="tr_scan:8:8:1,tr_scan:16:8:1,tr_scan:8:4:1,tr_scan:16:4:1,tr_scan:8:16:1,tr_scan:16:16:1,tr_scan:32:8:1,tr_scan:8:8:2" \
    SWEEP_M1_BWD="tr:4:16:1,tr:4:8:1,tr:2:16:1,tr:2:8:1,tr:4:4:1,tr:8:16:1,tr:2:32:1,tr:4:16:2" \
        timeout $(tmo 110) python3 benchmarks/gpu/sweep_tt.py "$R/sweep" --parts m1 --budget 100 > "$R/sweep_tt.log" 2>&1
    echo "sweep rc=$?"; grep -E "m1|best" "$R/sweep_tt.log" | tail -n 25
    SWEEP_M1_DTYPE=float32 SWEEP_M1_FWD="base:8:32:4,tr_scan:8:8:1,tr_scan:16:8:1,tr_scan:8:16:1,tr_scan:4:8:1" \
    SWEEP_M1_BWD="base:8:32:4" timeout $(tmo 60) python3 benchmarks/gpu/sweep_tt.py "$R/sweep32" --parts m1 --budget 50 \
        > "$R/sweep_tt_f32.log" 2>&1
    echo "sweep f32 rc=$?"; grep -E "m1|best" "$R/sweep_tt_f32.log" | tail -n 10
    GPU_CHECK_PARTS=bench GPU_CHECK_BENCH_BACKENDS=torch_triton GPU_CHECK_BENCH_OPS=ssd_scan \
        timeout $(tmo 150) python3 backends/cuda_cupy/gpu_check.py "$R/tt_ssd_f32" > "$R/tt_ssd_f32.log" 2>&1
    echo "tt ssd f32 rc=$?"; grep -E "torch_triton" "$R/tt_ssd_f32.log" | cut -c1-300
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
certify4)
    # Last call of the night session: every certificate under the final defaults (cuda_cupy's
    # tiled row scan and whatever else landed; torch_triton's new Mamba-1 configs) with the GPU
    # tests, in parallel; then the side-by-side bench, decode and the Mamba-1 yardstick.
    results_dir
    DEADLINE=${DEADLINE:-560}
    if [ -f .official/build_ss.py ]; then (timeout 280 python3 .official/build_ss.py > "$R/ss_build.log" 2>&1 &); fi
    for dt in float32 bfloat16; do
        job "tt_${dt}_ops" $(tmo 240) mamba-conformance torch_triton --dtype $dt --only 'op:*' -q \
            --json "$R/torch_triton.gpu.ops.$dt.certificate.json"
        job "tt_${dt}_models" $(tmo 240) mamba-conformance torch_triton --dtype $dt --only 'mixer:*' --only 'lm:*' -q \
            --json "$R/torch_triton.gpu.models.$dt.certificate.json"
    done
    job cupy_conf $(tmo 240) env GPU_CHECK_PARTS=conformance python3 backends/cuda_cupy/gpu_check.py "$R/cupy_conf"
    job cupy_tests $(tmo 240) python3 -m pytest -q -rs -p no:cacheprovider backends/cuda_cupy/tests/
    job tt_tests $(tmo 240) env TRITON_INTERPRET=0 python3 -m pytest -q -p no:cacheprovider \
        backends/torch_triton/tests/test_m1_norm_conv_kernels.py backends/torch_triton/tests/test_mixer_steps.py
    wait; cat "$R/rc.txt"; for f in "$R"/*.log; do echo "== $f"; tail -n 2 "$f" | cut -c1-300; done
    GPU_CHECK_PARTS=bench GPU_CHECK_TT_OPS=selective_scan,mamba3_siso,rmsnorm_gated,add_rmsnorm,causal_conv1d \
        timeout $(tmo 170) python3 backends/cuda_cupy/gpu_check.py "$R/bench" > "$R/bench.log" 2>&1
    echo "bench rc=$?"; grep -E "cuda_cupy|torch_triton" "$R/bench.log" | cut -c1-300
    GPU_CHECK_PARTS=decode timeout $(tmo 80) python3 backends/cuda_cupy/gpu_check.py "$R/decode" > "$R/decode.log" 2>&1
    echo "decode rc=$?"; grep -E "decode" "$R/decode.log" | cut -c1-300
    for i in $(seq 1 20); do ls /tmp/ss_build/selective_scan_cuda*.so > /dev/null 2>&1 && break; sleep 3; done
    YARDSTICK_PARTS=mamba1 timeout $(tmo 80) python3 benchmarks/gpu/yardstick.py "$R/yd" > "$R/yardstick.log" 2>&1
    echo "yardstick rc=$?"; grep -E "ratio|FAILED" "$R/yardstick.log"
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
round6)
    # After run 12: decay_grad from the tiled forward sweep's checkpoints (its own forward jobs
    # skipped). GPU tests, cuda_cupy's certificate and the mended torch_triton test in parallel;
    # then the scan pieces and ops, and torch_triton's float32 SSD row (its long compile last).
    results_dir
    DEADLINE=${DEADLINE:-560}
    job cupy_tests $(tmo 200) python3 -m pytest -q -rs -p no:cacheprovider backends/cuda_cupy/tests/test_gpu.py \
        -k "tiled or scan_ops or decay or fused or native"
    job cupy_conf $(tmo 200) env GPU_CHECK_PARTS=conformance python3 backends/cuda_cupy/gpu_check.py "$R/cupy_conf"
    job tt_tests $(tmo 200) env TRITON_INTERPRET=0 python3 -m pytest -q -p no:cacheprovider \
        backends/torch_triton/tests/test_m1_norm_conv_kernels.py
    wait; cat "$R/rc.txt"; for f in "$R"/*.log; do echo "== $f"; tail -n 3 "$f" | cut -c1-300; done
    BENCH_SCAN_KINDS=tiled BENCH_SCAN_PLANS=" " timeout $(tmo 90) python3 benchmarks/gpu/bench_cupy_scan.py "$R/scan" \
        --budget 80 > "$R/bench_cupy_scan.log" 2>&1
    echo "bench_cupy_scan rc=$?"; cut -c1-300 "$R/bench_cupy_scan.log"
    GPU_CHECK_PARTS=bench GPU_CHECK_BENCH_BACKENDS=torch_triton GPU_CHECK_BENCH_OPS=ssd_scan \
        timeout $(tmo 300) python3 backends/cuda_cupy/gpu_check.py "$R/tt_ssd_f32" > "$R/tt_ssd_f32.log" 2>&1
    echo "tt ssd f32 rc=$?"; grep -E "torch_triton" "$R/tt_ssd_f32.log" | cut -c1-300
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
tests7)
    # The cuda_cupy GPU tests alone (after round6: the tests' broadcast inputs mended so the
    # tiled kernel's per-head Am cases reach it).
    results_dir
    DEADLINE=${DEADLINE:-400}
    timeout $(tmo 380) python3 -m pytest -q -rs -p no:cacheprovider backends/cuda_cupy/tests/ > "$R/cupy_tests.log" 2>&1
    echo "cupy tests rc=$?"; tail -n 5 "$R/cupy_tests.log" | cut -c1-300
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
final8)
    # Last call: cuda_cupy's register-held norms and time-tiled conv checked (all its GPU tests,
    # its certificate), then timed beside torch_triton.
    results_dir
    DEADLINE=${DEADLINE:-450}
    job cupy_tests $(tmo 330) python3 -m pytest -q -rs -p no:cacheprovider backends/cuda_cupy/tests/
    job cupy_conf $(tmo 330) env GPU_CHECK_PARTS=conformance python3 backends/cuda_cupy/gpu_check.py "$R/cupy_conf"
    wait; cat "$R/rc.txt"; for f in "$R"/*.log; do echo "== $f"; tail -n 3 "$f" | cut -c1-300; done
    GPU_CHECK_PARTS=bench GPU_CHECK_BENCH_OPS=rmsnorm_gated,add_rmsnorm,causal_conv1d \
        timeout $(tmo 100) python3 backends/cuda_cupy/gpu_check.py "$R/bench" > "$R/bench.log" 2>&1
    echo "bench rc=$?"; grep -E "cuda_cupy|torch_triton" "$R/bench.log" | cut -c1-300
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
certify3)
    # The float32 op certificate under the final default (IEEE float32 dots), and the float32
    # Mamba-3 rows at the benchmark shape with it (the backward used to run out of shared memory
    # there; it now fits its chunk to the device).
    results_dir
    job tt_f32_ops 200 mamba-conformance torch_triton --dtype float32 --only 'op:*' -q \
        --json "$R/torch_triton.gpu.ops.float32.certificate.json"
    wait; job bench_m3 150 env GPU_CHECK_PARTS=bench GPU_CHECK_BENCH_BACKENDS=torch_triton \
        GPU_CHECK_BENCH_OPS=mamba3_siso,mamba3_mimo python3 backends/cuda_cupy/gpu_check.py "$R/bench_m3"
    wait; cat "$R/rc.txt"; tail -n 2 "$R/tt_f32_ops.log"; grep torch_triton "$R/bench_m3.log" | cut -c1-300
    tar -czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$R"
    ;;
final)
    # a short last call: generation through the graph decoder, then official vs ours decode
    results_dir
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
