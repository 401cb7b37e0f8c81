# The GPU measurements still open (issues 19, 20, 22, 23: benchmarks/RESULTS.md "Still to measure"), one part per
# device call (each fits the 10-minute limit).
#
# Carry .whl/ and .dev/ (git-ignored; `bash benchmarks/device_carry.sh` assembles them here: the shared py3.12 wheels,
# optimum-quanto 0.2.7 and torchao 0.17.0, and a copy of the shared fullscale_e2e.py), i.e. the device tool's
# `carry: [".whl", ".dev"]`, and run in the checkout's root on the GPU machine ($OUT is the device's result folder):
#
#     bash benchmarks/gpu_session.sh PART
#
# PART, one per device call (each within the 10-minute limit; a machine released between calls loses /tmp, so a part
# rebuilds the full-size checkpoint, ~1 min, when it is missing). The calls still open, in the order worth running, are
# listed in benchmarks/RESULTS.md ("Still to measure"):
#   tests      the CUDA tests (precision, block swap/offload, compile, speed, kernels)
#   memtests   issue 19: block swap / offload / recompute CUDA tests, fused elementwise on CUDA, the allocator setting
#   gradcheck  issue 19: one step of the 24 GB and 16 GB plans' settings against the resident int8 model, full size
#   probe      issue 19: where a plan's host memory goes, then the 16 GB plan's settings through `longcat-nb train`
#   memory     issue 19: plans and precisions through `longcat-nb train`, capped with set_per_process_memory_fraction
#              (MEM_ONLY=variant,... from benchmarks/bench_memory.py; ≤ 2 variants a call, int4 alone)
#   sampletab  issue 20: the Sample tab's two clicks at full size
#   speed      issue 22: bench_levers (each lever on and off, one block); speedtests, speedtests2: the levers'
#              CUDA tests (two calls)
#   sample     issue 22: `longcat-nb sample`, whole command (SAMPLE_VARIANTS=...)
#   train      issue 22: `longcat-nb train` at 832×480×93, rank 16, eager (attention kept); train2: compiled blocks
#              keeping attention, a validation inside; train3: both recomputing attention
#   bsa, bsa2  issue 23: the kernels' CUDA tests and bench_bsa; eager training steps with sparse attention;
#   bsa3, bsa4 issue 23: compiled training steps with sparse attention (832×512 keeping attention; 832×480 defaults);
#              bsa3d: bsa3's dense comparison
#   long       continuation, a 3-segment long video, refinement, K/V-cache saving per step
#   profile    the trainer's step under torch.profiler per lever (GROUP=a, b, c: three calls; d: issue 23's sparse
#              and dense compiled steps at 832×512)
# Everything it prints and writes lands in $OUT (or ./gpu_out without it); the numbers go to benchmarks/results/.
set -euo pipefail
PART=${1:?usage: bash benchmarks/gpu_session.sh tests|memtests|gradcheck|probe|sampletab|speed|speedtests|speedtests2|sample|train|train2|train3|memory|bsa|bsa2|bsa3|bsa3d|bsa4|long|profile}
OUT=${OUT:-$PWD/gpu_out}; mkdir -p "$OUT"
WORK=${WORK:-/tmp/e2e}
E2E=.dev/fullscale_e2e.py
shopt -s nullglob
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl .dev/whl/*.whl
[ -f "$E2E" ] || { echo "no $E2E: run bash benchmarks/device_carry.sh here and carry .whl and .dev"; exit 2; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 E2E_SAMPLE_BEFORE_S=0
[ ! -f .dev/commit ] || export LONGCAT_NB_COMMIT=$(cat .dev/commit)   # device_carry.sh: the tree's commit
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
# results named as benchmarks/tables.py finds them (copy them into benchmarks/results/ here): GPU and date
TAG=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -oE '[AHL][0-9]+' | head -1 | tr A-Z a-z)
TAG=${TAG:-gpu}_$(date +%F)

e2e() {  # name, extra JSON, further e2e arguments
    local name=$1 extra=$2; shift 2
    echo "== $name $extra"
    python "$E2E" "$WORK" --steps 4 --extra "$(python3 -c 'import json,sys; print(json.dumps({**json.loads(sys.argv[1]), "output_dir": sys.argv[2]}))' "$extra" "$WORK/out_$name")" "$@" \
        2>&1 | tee "$OUT/train_$name.log" | grep -E '^\{|s/step|Error|error' | tail -3
}

case $PART in
  tests)
    python -m pytest -q -rs tests/test_precision.py tests/test_compile_cuda.py tests/test_memory.py tests/test_kernels.py \
        tests/test_speed.py 2>&1 | tee "$OUT/pytest_cuda.log" | tail -15 || echo "FAILED tests (above)" ;;   # (pytest is on the image; nbdev is not)
  memtests)   # issue 19: the stream test (new prefetch, then the old one, which must fail), swap/offload/recompute CUDA
             # tests on the exact-size page-locked arena, fused elementwise on CUDA, one block eager vs fused
    python -m pytest -q -rs tests/test_memory.py tests/test_compile_cuda.py 2>&1 | tee "$OUT/pytest_memory.log" | tail -8 || echo "FAILED tests (above): the rest still runs"
    python benchmarks/bench_elementwise.py --json "$OUT/elementwise.json" 2>&1 | tail -3
    [ ! -f .dev/race_old.py ] || python .dev/race_old.py 2>&1 | tail -3   # the old prefetch, where a session kept it
    python -c "import longcat_nb, os, torch; x = torch.empty(2**28, device='cuda'); \
print(os.environ['PYTORCH_CUDA_ALLOC_CONF'], [s['is_expandable'] for s in torch.cuda.memory._snapshot()['segments']][:3])" ;;
  gradcheck)   # issue 19: one step of an int8 24 GB plan (21 swapped) and the 16 GB plan for 27 GiB of host RAM (42
               # swapped, 32 inputs recomputed) against the resident int8 model, full size
    [ -d "$WORK/ckpt/dit" ] || python "$E2E" "$WORK" --build-only > "$OUT/build.log" 2>&1
    python benchmarks/grad_check_plans.py "$WORK/ckpt" --json "$OUT/grad_check.json" 2>&1 | tee "$OUT/grad_check.log" | tail -4 ;;
  speed)   # issue 22: each lever on and off on one full-width block (~5 min on an H100)
    python benchmarks/bench_levers.py --json "$OUT/levers_$TAG.json" 2>&1 | tee "$OUT/levers.log" | grep -v "^{" | tail -14 ;;
  speedtests|speedtests2)   # issue 22: the speed levers' tests on CUDA, in two calls (together they ran past 9
                # minutes on an H100: test_speed's inductor tests alone take ~5); each failure's message is kept
                # (-rfEs: the summary lines; --tb=short)
    if [ "$PART" = speedtests ]; then T="tests/test_fused_qk.py tests/test_lora_epilogue.py tests/test_loader.py tests/test_recompile.py"
    else T="tests/test_compile_cuda.py tests/test_speed.py"; fi
    # shellcheck disable=SC2086
    python -m pytest -q -rfEs --tb=short --durations=8 $T 2>&1 | tee "$OUT/pytest_$PART.log" | tail -40 \
        || echo "FAILED tests (above)" ;;
  train)   # issue 22, one call each (the first builds the checkpoint, ~60 s, and the caches; later ones reuse both):
           # train: eager blocks (compile_transformer false; attention kept where auto keeps it); train2: the default
           # (compiled blocks on an sm_80+ GPU), 8 steps with a validation after the fourth (steps 5-8 read as one
           # interval after the compiles; a recompile after the validation would show); train3: both recomputing attention
    e2e eager '{"compile_transformer": false}'
    python benchmarks/step_timeline.py "$WORK/out_eager" | tee "$OUT/timeline_eager.json" ;;
  train2)
    e2e default '{"validation_steps": 4}' --steps 8
    python benchmarks/step_timeline.py "$WORK/out_default" | tee "$OUT/timeline_default.json" ;;
  train3)
    e2e recompute '{"compile_transformer": false, "checkpoint_attention": "recompute"}'
    e2e compiled_recompute '{"compile_transformer": true, "checkpoint_attention": "recompute"}' ;;
  memory)   # calls of ≤ 2 variants (~3.5 min each; int4 ~8 min alone): issue 19's next ones are
            # MEM_ONLY=plan16g_kaggle,fp8 then int8,plan24 (plan24 unfused: the fused lever's own share)
    [ -d "$WORK/ckpt/dit" ] || python "$E2E" "$WORK" --build-only > "$OUT/build.log" 2>&1
    mkdir -p /tmp/bm/bf16; [ -e /tmp/bm/bf16/ckpt ] || ln -s "$WORK/ckpt" /tmp/bm/bf16/ckpt
    python benchmarks/bench_memory.py --e2e "$E2E" --work /tmp/bm --out "$OUT/memory.jsonl" --only "${MEM_ONLY:-plan24,plan16}" \
        2>&1 | tee "$OUT/memory.log" | tail -20 ;;
  probe)   # issue 19: where a plan's host memory goes (RSS, locked pages, cgroup), swapped blocks pinned as they load
           # vs pinned after the load, then the 16 GB plan's settings through `longcat-nb train` at a 15 GiB cap
    [ -d "$WORK/ckpt/dit" ] || python "$E2E" "$WORK" --build-only > "$OUT/build.log" 2>&1
    python benchmarks/host_memory_probe.py "$WORK/ckpt" --json "$OUT/host_probe.json" 2>&1 | tee "$OUT/probe.log" | tail -30
    mkdir -p /tmp/bm/bf16; [ -e /tmp/bm/bf16/ckpt ] || ln -s "$WORK/ckpt" /tmp/bm/bf16/ckpt
    python benchmarks/bench_memory.py --e2e "$E2E" --work /tmp/bm --out "$OUT/memory.jsonl" --only "${MEM_ONLY:-kaggle16_settings}" \
        2>&1 | tee "$OUT/memory.log" | tail -20 ;;
  sampletab)   # issue 20: the Sample tab's two clicks at full size (distilled 16-step preview; a random full-width
               # rank-128 cfg_step_lora is written into the checkpoint first, as the release has one)
    [ -d "$WORK/ckpt/dit" ] || python "$E2E" "$WORK" --build-only > "$OUT/build.log" 2>&1
    python benchmarks/bench_sample_tab.py "$WORK/ckpt" --distilled --with-random-distilled-lora --json "$OUT/sample_tab_$TAG.json" \
        2>&1 | tee "$OUT/sample_tab.log" | tail -25 ;;
  sample)   # issue 22: `longcat-nb sample`, whole command, at 832×480×93 (bench_sample_cli.py; cfg40 ~6 min, a
            # distilled variant ~1.5 min plus its compile). tables.py takes the newest row per GPU and variant, files
            # ordered by the date in their names, then by name: SUFFIX (after the date, e.g. _run3) makes a later call
            # of the same day sort after the earlier ones. The H100's calls ran (_run4, _run5 at 1ed7988); next, on an
            # H200: SAMPLE_VARIANTS=cfg40_default,distilled
    python -m pytest -q tests/test_lora_interop.py -k gpu_is_made 2>&1 | tee "$OUT/pytest_lora_gpu.log" | tail -2 \
        || echo "FAILED test (above): the sample still runs"
    [ -d "$WORK/ckpt/dit" ] || python "$E2E" "$WORK" --build-only > "$OUT/build.log" 2>&1
    V=${SAMPLE_VARIANTS:-distilled}
    python benchmarks/bench_sample_cli.py "$WORK/ckpt" --with-random-distilled-lora \
        --variants "$V" --json "$OUT/sample_cli_${TAG}${SUFFIX:-}_${V//,/-}.json" \
        2>&1 | tee "$OUT/sample_cli.log" | tail -8 ;;
  bsa)   # issue 23, call 1: the raster-order kernels' CUDA accuracy (auto runs them on CUDA since 2026-12-06),
         # the kernel and whole-path speed-ups (both grids, and the padded 832×480 one) and one full-size block;
         # BSA_TESTS: which CUDA tests (-k), SUFFIX: after the date in the JSON names (a second run the same day)
    python -m pytest -q -s tests/test_kernels.py -k "${BSA_TESTS:-cuda}" 2>&1 | tee "$OUT/pytest_bsa.log" \
        | grep -E "rel|passed|failed" || echo "FAILED tests (above)"
    python benchmarks/bench_bsa.py --block --repeats 10 --json "$OUT/bsa_whole_path_$TAG${SUFFIX:-}.json" 2>&1 \
        | tee "$OUT/bsa.log" | grep -v "^{" | tail -20
    python benchmarks/bench_bsa.py --kernel triton --grids 24x30x52 --repeats 10 \
        --json "$OUT/bsa_whole_path_${TAG}${SUFFIX:-}_480.json" 2>&1 | grep -v "^{" | tail -4 ;;
  bsa2)  # issue 23, call 2: eager training steps — dense and triton at 832×512×93, triton at 832×480×93 (padded): ~9.5
         # minutes on an H100 (run 2026-12-06 with the last one in a call of its own)
    [ -d "$WORK/ckpt/dit" ] || python "$E2E" "$WORK" --build-only > "$OUT/build.log" 2>&1   # a fresh machine: build it
    mkdir -p "$WORK-512"; [ -e "$WORK-512/ckpt" ] || ln -s "$WORK/ckpt" "$WORK-512/ckpt"
    T='"attention_implementation": "bsa", "bsa_kernel": "triton", "compile_transformer": false'
    WORK=$WORK-512 e2e dense512 '{"compile_transformer": false}' --size 832x512
    WORK=$WORK-512 e2e bsa512_triton "{$T}" --size 832x512
    e2e bsa480_triton "{$T}"
    for n in dense512 bsa512_triton; do python benchmarks/step_timeline.py "$WORK-512/out_$n" > "$OUT/timeline_$n.json"; done
    python benchmarks/step_timeline.py "$WORK/out_bsa480_triton" > "$OUT/timeline_bsa480_triton.json" ;;
  bsa3|bsa3d|bsa4)   # issue 23, one call each: compiled blocks with sparse attention, 8 steps and a validation after the
               # fourth (steps 5-8 are the steady figure, as train2): bsa3 at 832×512×93 keeping attention's output,
               # bsa4 at 832×480×93 with the defaults (auto: compiled, attention kept where it fits)
    [ -d "$WORK/ckpt/dit" ] || python "$E2E" "$WORK" --build-only > "$OUT/build.log" 2>&1
    mkdir -p "$WORK-512"; [ -e "$WORK-512/ckpt" ] || ln -s "$WORK/ckpt" "$WORK-512/ckpt"
    T='"attention_implementation": "bsa", "bsa_kernel": "triton", "validation_steps": 4'
    if [ "$PART" = bsa3d ]; then                          # the dense comparison of bsa3 (2026-12-06: 13.15 s)
        WORK=$WORK-512 e2e dense512_compiled '{"validation_steps": 4, "compile_transformer": true, "checkpoint_attention": "keep"}' \
            --size 832x512 --steps 8
        python benchmarks/step_timeline.py "$WORK-512/out_dense512_compiled" | tee "$OUT/timeline_dense512_compiled.json"
    elif [ "$PART" = bsa3 ]; then
        WORK=$WORK-512 e2e bsa512_compiled "{$T, \"compile_transformer\": true, \"checkpoint_attention\": \"keep\"}" \
            --size 832x512 --steps 8
        python benchmarks/step_timeline.py "$WORK-512/out_bsa512_compiled" | tee "$OUT/timeline_bsa512_compiled.json"
    else
        e2e bsa480_default "{$T}" --steps 8
        python benchmarks/step_timeline.py "$WORK/out_bsa480_default" | tee "$OUT/timeline_bsa480_default.json"
    fi ;;
  long)
    [ -d "$WORK/ckpt/dit" ] || python "$E2E" "$WORK" --build-only > "$OUT/build.log" 2>&1
    python benchmarks/bench_long_video.py "$WORK/ckpt" --work "$WORK/bench" --steps 2 --kv-steps 3 --refine-steps 50 \
        --segments 3 --json "$OUT/bench_long_video.json" 2>&1 | tee "$OUT/long.log" | tail -20 ;;
  profile)   # four groups, one call each: PART=profile GROUP=a|b|c|d (d: issue 23, sparse and dense compiled, 832×512)
    H=480
    case ${GROUP:-a} in a) V=before,lora_fix,keep ;; b) V=default,bare ;; c) V=compiled,compiled_keep ;;
                        d) V=bsa_compiled_keep,compiled_keep H=512 ;; esac
    python benchmarks/profile_step.py --variants "$V" --height $H --steps 2 --json "$OUT/profile_${GROUP:-a}.json" 2>&1 \
        | tee "$OUT/profile_${GROUP:-a}.log" | tail -40 ;;
  *) echo "unknown part $PART"; exit 2 ;;
esac
