#!/usr/bin/env bash
# One device session's batch (developer tool): install, sweep variants against cuBLAS, GPU tests,
# ncu. Logs go to $OUT (the device tool brings them back). Steps are picked by name:
#   bash bench/device_run.sh smoke coldstart hostoverhead fastlaunch grouped-swiglu before-after warmup tests modelbench fp8out swiglu mlpblock verify27 recipe256 recipe256op pairs-sk sweep-midrule benchmid sweep-m32 smallstream sweep-m128 tests-rules pairpicks sweep-wide-mid widepicks partial-diag tileshift pairsnoise narrow-n narrowpicks hbmceil slabskip l2stable l2bench1k filltrace verify25 cublas-shapes sweep-large sweep-mid sweep-small bench grouped grouped-sweep grouped-gap pdl l2sides l2bench swapbench ablation-small ncu ncu-sass ncu-vs-cublas ablate sanitize
set -uo pipefail
OUT=${OUT:-/tmp/dg_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 DEEPERGEMM_COMMIT=${DEEPERGEMM_COMMIT:-unknown}
LARGE=${LARGE:-128x128s6dc2,128x128s6d,128x128s6dc2x2,128x128s6dc1x2}
SMALL=${SMALL:-64x32s16d,64x64s13d,64x64s8d,64x128s8d}
MID=${MID:-256x128s4p,256x128s4pc1x2,128x128s6p,128x128s6w,128x128s6pc2,128x128s6wc2,128x192s5p,128x192s5pc2,64x128s8dc2}
# At most 8 files come back from $OUT: only the logs that matter go there.
python -m pip install -q -e . --no-deps --no-build-isolation > /tmp/install.log 2>&1 || { cat /tmp/install.log; exit 1; }
python -c "import deepergemm" || { echo "deepergemm does not import after the install:"; cat /tmp/install.log; exit 1; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(date +%s.%N)"; }
for step in "$@"; do
  echo "=== $step $(date +%T)"
  case $step in
    smoke) # the host binding's three backends on one small GEMM, step by step; a crash gets a C++ backtrace
           # (cuda-gdb) and stops the batch
         if ! timeout 120 python bench/debug_native.py reference cublas ptx > "$OUT/smoke.log" 2>&1; then
           tail -20 "$OUT/smoke.log"
           timeout 240 cuda-gdb -q -batch -ex run -ex bt --args python bench/debug_native.py reference cublas ptx 2>&1 \
             | grep -v "^\[New Thread\|^\[Thread\|Detaching" | tail -40
           exit 1
         fi
         grep -E "^->|calc_diff" "$OUT/smoke.log" ;;
    coldstart) # issue 22: a new user's first run on a fresh machine: empty cache, the main job end to end (host
               # binding and kernel builds included), then a new process's first GEMM with one variant missing
               # and with everything cached
         export DEEPERGEMM_CACHE_DIR=/tmp/dg_cold; rm -rf "$DEEPERGEMM_CACHE_DIR"
         t=$(date +%s.%N); timeout 400 python -m deepergemm > "$OUT/coldstart.log" 2>&1; rc=$?
         echo "main job (cold cache): rc=$rc, $(secs $t) s end to end"
         grep -E "^\[deepergemm\]|geomean|FAILED|Error" "$OUT/coldstart.log" | head -20; tail -12 "$OUT/coldstart.log"
         t=$(date +%s.%N); python -m deepergemm build --variants 128x128s6wc2 --out /tmp/one_unit --jobs 1 > /dev/null 2>&1
         echo "one kernel unit alone (nvcc, 1 job): $(secs $t) s"
         rm -rf "$DEEPERGEMM_CACHE_DIR/kernels"
         python bench/first_call.py --shape 64x7168x2048 2>&1 | grep -v "^\[deepergemm\] \[" | sed 's/^/unit missing: /'
         python bench/first_call.py --shape 64x7168x2048 2>&1 | sed 's/^/all cached:   /' ;;
    before-after) # issue 23: the 24-shape bench of the session's starting commit (.baseline/, a git worktree of
         # 7e9ced9 that `carry` brings: `git worktree add --detach .baseline 7e9ced9`) and of this tree, one after
         # the other on this machine (the old tree builds its variants with load_inline, in parallel first)
         [ -d .baseline ] || { echo "no .baseline/ (carry it)"; continue; }
         ( cd .baseline && python -m pip install -q -e . --no-deps --no-build-isolation > /tmp/base_install.log 2>&1 \
           && keys=$(python -c "import torch; from deepergemm import configs; from deepergemm.benchmark.shapes import select_shapes
sms = torch.cuda.get_device_properties(0).multi_processor_count
print(','.join(sorted({configs.select(s.m, s.n, s.k, sms).variant.key for s in select_shapes('all')})))") \
           && DEEPERGEMM_CACHE_DIR=/tmp/dg_base timeout 300 python -m deepergemm warmup --jobs 16 --variants "$keys" > /tmp/base_warm.log 2>&1; \
           DEEPERGEMM_CACHE_DIR=/tmp/dg_base timeout 240 python -m deepergemm bench --shapes all --launches 30 \
             --backends ptx,cublas --no-bf16 --markdown --out /tmp/bench_out 2>&1 | grep -v "^\[deepergemm\]" > "$OUT/bench_before.log" )
         python -m pip install -q -e . --no-deps --no-build-isolation > /tmp/install.log 2>&1
         timeout 240 python -m deepergemm bench --shapes all --launches 30 --backends ptx,cublas --no-bf16 --markdown \
           --out /tmp/bench_out 2>&1 | grep -v "^\[deepergemm\]" > "$OUT/bench_after.log"
         python bench/compare_benches.py "$OUT/bench_before.log" "$OUT/bench_after.log" ;;
    hostoverhead) # issue 22: host time per call, ours (C++ op) vs torch._scaled_mm, eager loops and graphs
         timeout 300 python bench/host_overhead.py 2>&1 | grep -v "^\[deepergemm\]" | tee "$OUT/host_overhead.log" ;;
    sweep-large) timeout 300 python bench/sweep_variants.py --shapes large --variants "auto,$LARGE" --jobs 16 \
                   2>&1 | tee "$OUT/sweep_large${TAG:-}.log" | grep -v "^\[deepergemm\]" ;;
    sweep-small) timeout 240 python bench/sweep_variants.py --shapes small --variants "auto,$SMALL" --jobs 16 \
                   2>&1 | tee "$OUT/sweep_small${TAG:-}.log" | grep -v "^\[deepergemm\]" ;;
    sweep-mid) # issue 25: the middle M (256-2048) over the anchor (N, K) pairs, every large/mid tile against cuBLAS
         timeout 400 python bench/sweep_variants.py --shapes mid --variants "auto,$MID" --jobs 16 --launches 15 \
                   2>&1 | tee "$OUT/sweep_mid${TAG:-}.log" | grep -v "^\[deepergemm\]" ;;
    sweep-midrule) # issue 25: the 64x64 middle-M rule (configs.MID_M_SMALL_TILES) as a pick, at the shapes it sends
                   # to 64x64 tiles and around them, against the tiles it replaced
         timeout 300 python bench/sweep_variants.py --shapes 256x2112x7168,192x2112x7168,129x2112x7168,256x1536x7168,256x576x7168,160x2048x7168,256x1024x4096,256x4096x7168 \
           --variants auto,64x128s8dc2,64x64s13dm1,128x128s6w --jobs 16 --launches 30 --json "$OUT/sweep_midrule.json" \
           2>&1 | tee "$OUT/sweep_midrule.log" | grep -v "^\[deepergemm\]" ;;
    benchmid) rm -rf /tmp/bench_mid; timeout 300 python -m deepergemm bench --shapes mid,all --launches 30 \
               --backends ptx,cublas --no-bf16 --markdown --out /tmp/bench_mid 2>&1 | grep -v "^\[deepergemm\]" \
               | tee "$OUT/bench_mid_all.log" | tail -70
              cp /tmp/bench_mid/gemm_*.json "$OUT/" 2>/dev/null ;;
    sweep-m32) # issue 25/27: 16 < M <= 64 on wide weights, unswapped 64x32 / 64x64 against swapped, one process; then
               # the MLP block at M = 32 with and without swapped tiles (DEEPERGEMM_SWAP_AB=1)
         S=""; for m in 24 32 48 64; do for nk in 36864x7168 18432x7168 7168x16384 24576x1536 4096x7168 7168x2048 2112x7168 32768x512; do S="$S,${m}x$nk"; done; done
         timeout 300 python bench/sweep_variants.py --shapes "${S#,}" --variants auto,64x32s16dm1,64x64s13dm1,64x32s16dm1t,64x64s13dm1t \
           --jobs 16 --launches 30 --json "$OUT/sweep_m32.json" 2>&1 | grep -v "^\[deepergemm\]" > "$OUT/sweep_m32.log"; tail -3 "$OUT/sweep_m32.log"
         for sw in "" 1; do
           echo "== DEEPERGEMM_SWAP_AB=${sw:-default}"
           DEEPERGEMM_SWAP_AB=$sw timeout 100 python bench/swiglu_bench.py --block --m 32 --shapes 7168x18432 2>&1 | grep -v "^\[deepergemm\]" | tail -2
         done ;;
    smallstream) # issue 25/27: the small-M wide-weight rule (configs.SMALL_M_STREAM_MAX_M) as picks, the decode bench,
                 # then the fused epilogues (always fused, DEEPERGEMM_FUSED_EPILOGUE=1) against the unfused steps at M <= 128
         timeout 150 python bench/sweep_variants.py --shapes 1x36864x7168,16x36864x7168,24x36864x7168,32x36864x7168,48x36864x7168,32x18432x7168,48x18432x7168,32x32768x512,48x32768x512 \
           --variants auto --jobs 16 --launches 30 --json "$OUT/smallstream.json" 2>&1 | grep -v "^\[deepergemm\]" | grep "configs\|cuBLAS   "
         timeout 200 python -m deepergemm bench --shapes decode --launches 30 --backends ptx,cublas --no-bf16 --markdown \
           --out /tmp/bench_out 2>&1 | grep -v "^\[deepergemm\]" > "$OUT/bench_decode.log"; tail -45 "$OUT/bench_decode.log"
         DEEPERGEMM_FUSED_EPILOGUE=1 timeout 150 python bench/swiglu_bench.py --block --m 1,16,32,48,64,128 --shapes 7168x18432,7168x2048 \
           2>&1 | grep -v "^\[deepergemm\]" | tee "$OUT/swiglu_block_small.log"
         DEEPERGEMM_FUSED_EPILOGUE=1 timeout 150 python bench/fp8_out_bench.py --m 1,16,32,48,64,128 --nk 36864x7168,18432x7168,32768x512,7168x2048,4096x7168 \
           2>&1 | grep -v "^\[deepergemm\]" | tee "$OUT/fp8_out_small.log" ;;
    sweep-m128) # issue 25/27: 64 < M <= 128 on wide weights (the picks jump between 64x32 alone and 64x64 / 64x128
                # pairs there), M = 64 unpaired, and the four middle-M shapes below cuBLAS with 64-row tiles over waves
         S=""; for m in 96 128; do for nk in 36864x7168 18432x7168 20480x7168 16384x7168 24576x1536 32768x512; do S="$S,${m}x$nk"; done; done
         timeout 200 python bench/sweep_variants.py --shapes "${S#,}" --variants auto,64x32s16dm1,64x64s13dm1,64x64s13dc2m1,64x128s8dc2m1,64x128s8d,64x128s8dm1 \
           --jobs 16 --launches 30 --json "$OUT/sweep_m128.json" 2>&1 | grep -v "^\[deepergemm\]" > "$OUT/sweep_m128.log"; tail -2 "$OUT/sweep_m128.log"
         timeout 100 python bench/sweep_variants.py --shapes 64x20480x7168,64x16384x7168,80x18432x7168 --variants auto,64x32s16dm1,64x64s13dm1,64x128s8dm1 \
           --jobs 16 --launches 30 --json "$OUT/sweep_m64.json" 2>&1 | grep -v "^\[deepergemm\]" > "$OUT/sweep_m64.log"; tail -2 "$OUT/sweep_m64.log"
         timeout 150 python bench/sweep_variants.py --shapes 256x7168x2048,512x4096x7168,256x24576x1536,512x2112x7168 \
           --variants auto,64x64s13dm1,64x64s13dc2m1,64x128s8dm1,64x128s8dc2m1,128x128s6w,128x128s6p --jobs 16 --launches 30 \
           --json "$OUT/sweep_midlow.json" 2>&1 | grep -v "^\[deepergemm\]" > "$OUT/sweep_midlow.log"; tail -2 "$OUT/sweep_midlow.log" ;;
    tests-rules) # the GPU tests the selection rules touch (fused epilogues on their new plans, L2-side detection)
         timeout 200 python -m pytest -q -m gpu -p no:cacheprovider tests/test_swiglu.py tests/test_fp8_out.py tests/test_l2_sides.py \
           tests/test_configs.py 2>&1 | tee "$OUT/gpu_tests_rules.log" | tail -4 ;;
    pairpicks) # issue 25: the 64 < M <= 128 wide-weight rule (64x128 pairs) as picks, next to the tiles it replaced
         timeout 150 python bench/sweep_variants.py --shapes 80x18432x7168,96x18432x7168,112x36864x7168,128x18432x7168,128x20480x7168,72x24576x1536 \
           --variants auto,64x32s16dm1,64x64s13dc2m1 --jobs 16 --launches 30 --json "$OUT/pairpicks.json" 2>&1 | grep -v "^\[deepergemm\]" \
           | grep "configs\|cuBLAS   " ;;
    sweep-wide-mid) # issue 25: 128 < M <= 384 on DeepSeek-V3's MLP weights (gate/up 36864 and 18432 rows, down 7168 x
                    # 18432) and 24576x1536: the middle-M picks there were never timed
         S=""; for m in 160 256 384; do for nk in 36864x7168 18432x7168 7168x18432 24576x1536; do S="$S,${m}x$nk"; done; done
         timeout 200 python bench/sweep_variants.py --shapes "${S#,}" --variants auto,128x128s6w,128x128s6wc2,128x192s5p,128x192s5pc2,64x128s8dc2,64x128s8dc2m1,256x128s4p \
           --jobs 16 --launches 30 --json "$OUT/sweep_wide_mid.json" 2>&1 | grep -v "^\[deepergemm\]" > "$OUT/sweep_wide_mid.log"; tail -2 "$OUT/sweep_wide_mid.log" ;;
    widepicks) # issue 25: the 128 < M <= 256 wide-weight rule (128x192 2x1 pairs) as picks
         timeout 100 python bench/sweep_variants.py --shapes 160x36864x7168,160x18432x7168,192x18432x7168,256x18432x7168,256x36864x7168 \
           --variants auto --jobs 16 --launches 30 --json "$OUT/widepicks.json" 2>&1 | grep -v "^\[deepergemm\]" | grep "configs\|cuBLAS   " ;;
    partial-diag) # the part-filled M-tile lead, taken apart (bench/partial_tile.py): full tile, full tile of zero rows,
                  # part tile, part tile in a full allocation; then the same with the epilogue ablated (no stores)
         timeout 150 python bench/partial_tile.py ${PARTIAL_ARGS:-} 2>&1 | grep -v "^\[deepergemm\]" | tee "$OUT/partial_diag.log"
         DEEPERGEMM_NVCC_DEFINES=DG_ABLATE_EPILOGUE timeout 200 python bench/partial_tile.py ${PARTIAL_ARGS:-} 2>&1 \
           | grep -v "^\[deepergemm\]" | tee -a "$OUT/partial_diag.log" ;;
    narrow-n) # issue 25: 128-row tiles narrower than 128 (not selectable: 10-30% slower per element at large M) where
              # 128x128 tiles leave SMs idle or fill them through stream-K: 128x64 (N = 2112: 33 N-tiles, 132 tiles
              # at M = 512) and 128x112 (N = 7168: 64 N-tiles, 128 tiles at M = 256)
         timeout 250 python bench/sweep_variants.py --shapes ${NARROW_SHAPES:-256x7168x2048,512x7168x2048,512x2112x7168,1024x2112x7168,2048x2112x7168,256x2112x7168,512x4096x7168,256x24576x1536,128x32768x512,256x32768x512,4096x2112x7168} \
           --variants auto,128x64s8w,128x64s8p,128x112s6w --jobs 16 --launches 30 --json "$OUT/narrow_n.json" 2>&1 \
           | grep -v "^\[deepergemm\]" | tail -16 ;;
    narrowpicks) # issue 25: the 128x64 rule (configs.NARROW_TILE) as picks, next to the tiles it replaced, and
                 # 128x64 at 64 < M < 128 on a wide weight at K = 512 (NARROW_TILE_MIN_SMALL_M)
         timeout 200 python bench/sweep_variants.py --shapes ${NARROW_PICK_SHAPES:-512x2112x7168,300x2112x7168,384x2112x7168,448x1536x7168,384x576x7168,512x576x7168,128x32768x512,96x32768x512,80x32768x512,72x32768x512} \
           --variants auto,128x64s8w,128x128s6w,64x128s8d --jobs 16 --launches 30 --json "$OUT/narrowpicks.json" 2>&1 \
           | grep -v "^\[deepergemm\]" | grep "configs\|cuBLAS   " ;;
    tileshift) # the part-filled last M-tile moved up to end at the last row (producer.cuh kMovesLastTile, the default)
               # against the tile in place (DG_NO_TILE_SHIFT), alternating builds (ROUNDS pairs, one process each,
               # cuBLAS timed in each): a build's fixed cost shows in every round, drift does not; the last four
               # shapes fill their tiles (nothing moves: what the build alone costs)
         S=${TILESHIFT_SHAPES:-97x7168x2048,65x24576x1536,600x7168x2048,3000x7168x4096,160x18432x7168,160x7168x18432,300x2112x7168,1500x24576x1536,64x24576x1536,128x7168x2048,512x7168x2048,4096x7168x2048}
         DEEPERGEMM_NVCC_DEFINES=DG_NO_TILE_SHIFT timeout 200 python bench/sweep_variants.py --shapes "$S" --variants auto \
           --jobs 16 --launches 5 > /dev/null 2>&1
         for r in $(seq ${ROUNDS:-2}); do for d in "" DG_NO_TILE_SHIFT; do
           echo "== round $r, defines: ${d:-none}"
           DEEPERGEMM_NVCC_DEFINES=$d timeout 150 python bench/sweep_variants.py --shapes "$S" --variants auto --jobs 16 \
             --launches 50 --json "$OUT/tileshift_${r}${d:+_inplace}.json" 2>&1 | grep -v "^\[deepergemm\]" | grep -E "cuBLAS   |configs"
         done; done ;;
    pairsnoise) # issue 27: the pairs' per-element accumulation noise over many draws (tests' bound, bench/pairs_noise.py)
         timeout 200 python bench/pairs_noise.py --draws ${DRAWS:-20} 2>&1 | grep -v "^\[deepergemm\]" | tee "$OUT/pairs_noise.log" ;;
    hbmceil) # issue 25/27: decode GEMMs against a plain read of the same weight bytes, timed the bench's way
         timeout 200 python bench/hbm_ceiling.py 2>&1 | grep -v "^\[deepergemm\]" | tee "$OUT/hbm_ceiling.log" ;;
    slabskip) # issue 25: DG_SLAB_SKIP (no wgmmas for a 64-row slab wholly past the tile's last row) against the
              # default build: its GPU tests (grouped and dense kernels), the grouped bench uneven, dense shapes
              # whose last M-tile is part-filled
         DEEPERGEMM_NVCC_DEFINES=DG_SLAB_SKIP timeout 200 python -m deepergemm warmup --jobs 16 --variants tested \
           > /tmp/warm_skip.log 2>&1; tail -1 /tmp/warm_skip.log
         DEEPERGEMM_NVCC_DEFINES=DG_SLAB_SKIP timeout 200 python -m pytest -q -m gpu tests/test_grouped.py \
           tests/test_gemm_kernel.py tests/test_moe_layout.py -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests_slabskip.log" | tail -4
         for d in ${SKIP_ROUNDS:-"" DG_SLAB_SKIP}; do
           echo "== defines: ${d:-none}"
           DEEPERGEMM_NVCC_DEFINES=$d timeout 150 python -m deepergemm grouped-bench --markdown --uneven 2>&1 \
             | grep -v "^\[deepergemm\]" | grep -E "^\| (contig|masked)"
           DEEPERGEMM_NVCC_DEFINES=$d timeout 100 python bench/sweep_variants.py --shapes ${SKIP_SHAPES:-4100x7168x2048,4200x2112x7168,2100x7168x4096,4160x4096x7168,320x7168x2048,1100x24576x1536} \
             --variants auto --launches 20 2>&1 | grep -v "^\[deepergemm\]" | grep -E "cuBLAS|auto"
         done ;;
    warmup) # the binding and every tested unit, in parallel (seconds): stop here if they did not all build
            timeout 300 python -m deepergemm warmup --jobs 16 --variants "${WARMUP_VARIANTS:-tested}" > /tmp/warmup.log 2>&1
            rc=$?; tail -2 /tmp/warmup.log
            if [ $rc -ne 0 ]; then echo "warmup failed or timed out (rc=$rc): stopping"; tail -20 /tmp/warmup.log; exit 1; fi ;;
    tests) # the whole GPU suite (DEEPERGEMM_TEST_SWITCHES=NAME=VALUE,... runs it under a setting: tests/conftest.py)
           timeout ${TESTS_TIMEOUT:-300} python -m pytest -q -m gpu --maxfail=10 -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" | tail -15 ;;
    bench) timeout 300 python -m deepergemm bench --shapes all --launches 30 --backends ptx,cublas --markdown \
             --out "$OUT" 2>&1 | tee "$OUT/bench.log" | tail -40 ;;
    grouped) # the grouped (MoE) GEMMs: GPU tests of test_grouped.py, then the ANCHORS.md grouped cases, equal and
             # uneven (+-30%) sizes
         timeout 240 python -m pytest -q -m gpu tests/test_grouped.py tests/test_moe_layout.py -p no:cacheprovider 2>&1 \
           | tee "$OUT/gpu_grouped_tests.log" | tail -8
         for flag in "" --uneven; do
           timeout 200 python -m deepergemm grouped-bench --markdown $flag 2>&1 | grep -v "^\[deepergemm\]"
         done | tee "$OUT/grouped_bench.log" ;;
    grouped-gap) # issue 25: the grouped contiguous cases against the dense kernel with the same tile (bench/grouped_gap.py)
         timeout 200 python bench/grouped_gap.py 2>&1 | grep -v "^\[deepergemm\]" | tee "$OUT/grouped_gap.log" ;;
    grouped-sweep) # every grouped variant on every grouped case (to tune configs.select_grouped)
         timeout 400 python -m deepergemm grouped-bench --markdown --variants all --launches 20 2>&1 \
           | grep -v "^\[deepergemm\]" | tee "$OUT/grouped_sweep.log" ;;
    l2sides) # issue 5: the L2-side detection, and its raw latencies for offline analysis (l2_cycles.pt)
         timeout 120 python -c "
import torch; from deepergemm import l2_sides
cycles, smid = l2_sides.measure(torch.device('cuda'))
torch.save({'cycles': cycles, 'smid': smid, 'stride': l2_sides.PROBE_STRIDE}, '$OUT/l2_cycles.pt')
r = l2_sides.detect(refresh=True); print('decided' if r.decided else 'UNDECIDED', '-', r.reason, f'({r.seconds:.2f} s)')
" 2>&1 | grep -v "^\[deepergemm\]" ;;
    l2stable) # issue 24: the detection repeated in one process and across processes, then the side pattern at
              # fine strides (bench/l2_fine.py, raw cycles in l2_fine.pt)
         for proc in 1 2 3; do
           timeout 60 python -c "
import zlib; from deepergemm import l2_sides
for i in range(3):
    r = l2_sides.detect(refresh=True)
    first = r.sm_side.get(min(r.sm_side), 0) if r.sm_side else 0  # label the side of the lowest SM id 0
    split = sorted(sm for sm, side in r.sm_side.items() if side == first)
    print('process $proc run', i, 'decided' if r.decided else 'UNDECIDED', '-', r.reason, '- split digest', zlib.crc32(str(split).encode()))
" 2>&1 | grep -v "^\[deepergemm\]"
         done
         timeout 120 python bench/l2_fine.py --out "$OUT/l2_fine.pt" 2>&1 | grep -v "^\[deepergemm\]" ;;
    ablation-small) # issue 4: what each small-M technique buys, switched one at a time in one process
         timeout 420 python bench/ablation.py --markdown --shapes ${ABL_SHAPES:-small,decode} 2>&1 \
           | grep -v "^\[deepergemm\]" | tee "$OUT/ablation_small.log" ;;
    swapbench) # issue 4: the decode shapes with swapped small-M tiles against the same run without (one process each)
         for swap in 0 1; do
           echo "== DEEPERGEMM_SWAP_AB=$swap"
           DEEPERGEMM_SWAP_AB=$swap timeout 140 python -m deepergemm bench --markdown --no-bf16 --shapes small,decode 2>&1 \
             | grep -v "^\[deepergemm\]"
         done | tee "$OUT/swap_bench.log" ;;
    l2bench) # issue 5: placed / side-scheduled B against plain and cuBLAS (needs a decided detection), + its GPU tests
         timeout 200 python -m pytest -q -m gpu tests/test_placed_gemm.py tests/test_l2_placement.py -p no:cacheprovider 2>&1 \
           | tee "$OUT/gpu_placed_tests.log" | tail -8
         timeout 300 python -m deepergemm l2-bench --markdown --shapes ${L2_SHAPES:-all,decode} 2>&1 \
           | grep -v "^\[deepergemm\]" | tee "$OUT/l2_bench.log" ;;
    modelbench) # issue 26: one DeepSeek-V3 layer step, bf16 / cuBLAS / deepergemm, eager and CUDA graphs
         timeout ${MODEL_TIMEOUT:-240} python -m deepergemm model-bench --markdown --paths ${MODEL_PATHS:-bf16,cublas,deepergemm,fused} --out /tmp/model_out 2>&1 \
           | grep -v "^\[deepergemm\]" | tee "$OUT/model_bench.log" | tail -30 ;;
    fp8out) # issue 27: the fp8-output GPU tests, then the fused op against fp8_gemm bf16 + quantize_act
         timeout 200 python -m pytest -q -m gpu tests/test_fp8_out.py -p no:cacheprovider 2>&1 | tail -8
         DEEPERGEMM_FUSED_EPILOGUE=1 timeout 120 python bench/fp8_out_bench.py 2>&1 | grep -v "^\[deepergemm\] \[" | tee "$OUT/fp8_out_bench.log" ;;
    grouped-swiglu) # issue 27: the grouped SwiGLU unit's GPU tests (never run before) and the ops around it, then
                    # the op fused against the steps, and FP8Experts' forward with fused_swiglu on and off
         timeout 300 python -m pytest -q -m gpu tests/test_grouped_swiglu.py tests/test_swiglu.py tests/test_grouped.py \
           -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests_grouped_swiglu.log" | tail -8
         timeout 200 python bench/grouped_swiglu_bench.py 2>&1 | grep -v "^\[deepergemm\] \[" \
           | tee "$OUT/grouped_swiglu_bench.log"
         timeout 150 python bench/grouped_swiglu_bench.py --masked --m 1,32,128,256 2>&1 | grep -v "^\[deepergemm\] \[" \
           | tee -a "$OUT/grouped_swiglu_bench.log"
         timeout 200 python bench/grouped_swiglu_bench.py --block --m 1,32,512,4096 2>&1 | grep -v "^\[deepergemm\] \[" \
           | tee -a "$OUT/grouped_swiglu_bench.log" ;;
    swiglu) # issue 27: the fused SwiGLU GPU tests, then fused against GEMM bf16 + swiglu + quantize_act
         timeout 200 python -m pytest -q -m gpu tests/test_swiglu.py -p no:cacheprovider 2>&1 | tail -8
         DEEPERGEMM_SPLIT_K=0 DEEPERGEMM_STREAM_K=0 DEEPERGEMM_FUSED_EPILOGUE=1 timeout 150 python bench/swiglu_bench.py 2>&1 \
           | grep -v "^\[deepergemm\] \[" | tee "$OUT/swiglu_bench.log" ;;
    verify27) # issue 27's GPU tests that were fixed or added without a GPU to run them (then: recipe256op
              # mlpblock, the measurements it could not take)
         timeout 150 python -m pytest -q -m gpu tests/test_recipe256.py tests/test_swiglu.py tests/test_fp8_out.py \
           tests/test_l2_placement.py -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests_27.log" | tail -6 ;;
    mlpblock) # issue 27: the MLP block (gate/up, SwiGLU, down), fused SwiGLU against unfused: the measured rule, then fused
         for fuse in auto 1; do
           echo "== DEEPERGEMM_FUSED_EPILOGUE=$fuse"
           DEEPERGEMM_FUSED_EPILOGUE=$fuse timeout 150 python bench/swiglu_bench.py --block --m 1,32,128,4096 2>&1 \
             | grep -v "^\[deepergemm\] \["
         done | tee "$OUT/mlp_block.log" ;;
    recipe256) # issue 27: the 256-K recipe's pairs variants against the 128 recipe's on the same operands
         timeout 300 python bench/recipe256_bench.py 2>&1 | grep -v "^\[deepergemm\] \[" | tee "$OUT/recipe256.log" ;;
    pairs-sk) # issue 27: the pairs under stream-K (ranges cut on pairs of K blocks): their GPU tests and the stream-K
              # tests of the 128 recipe (shared shape helpers), then the 256 recipe's large-M shapes through the op
         timeout 200 python -m pytest -q -m gpu tests/test_recipe256.py tests/test_gemm_kernel.py -k "stream_k or pairs" \
           -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests_pairs_sk.log" | tail -6
         timeout 200 python bench/recipe256_bench.py --op --shapes large --launches 20 2>&1 | grep -v "^\[deepergemm\] \[" \
           | tee "$OUT/recipe256_op_large.log" ;;
    recipe256op) # issue 27: the 256-K recipe through the public op against the 128 recipe's plan and cuBLAS
         timeout 300 python bench/recipe256_bench.py --op --launches 20 2>&1 | grep -v "^\[deepergemm\] \[" \
           | tee "$OUT/recipe256_op.log" ;;
    l2bench1k) # issue 24: placement with 1 KiB slots (opt-in), the same bench as l2bench
         DEEPERGEMM_L2_SIDES=1k timeout 300 python -m deepergemm l2-bench --markdown --shapes ${L2_SHAPES:-all,decode} 2>&1 \
           | grep -v "^\[deepergemm\]" | tee "$OUT/l2_bench_1k.log" ;;
    cublas-shapes) # which small blockwise shapes torch._scaled_mm takes here
         timeout 120 python bench/cublas_shapes.py 2>&1 | grep -v "^\[deepergemm\]" ;;
    verify25) # issue 25's changes that no GPU has run yet: the grouped kernels' uniform loops (their GPU tests, the
              # gap to the dense kernel, the bench against DeepGEMM's figures, equal and uneven) and the swapped
              # tiles by default at M <= 16 (the small and decode bench)
         timeout 200 python -m pytest -q -m gpu tests/test_grouped.py tests/test_moe_layout.py tests/test_gemm_kernel.py \
           -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests_25.log" | tail -4
         timeout 100 python bench/grouped_gap.py 2>&1 | grep -v "^\[deepergemm\]" | tee "$OUT/grouped_gap.log"
         for flag in "" --uneven; do
           timeout 100 python -m deepergemm grouped-bench --markdown $flag 2>&1 | grep -v "^\[deepergemm\]"
         done | tee "$OUT/grouped_bench.log" | grep -E "^\| (contig|masked)"
         timeout 150 python -m deepergemm bench --shapes small,decode --backends ptx,cublas --no-bf16 --markdown \
           --out /tmp/bench_out 2>&1 | grep -v "^\[deepergemm\] \[" | tee "$OUT/bench_decode.log" | grep geomean ;;
    filltrace) # issue 25: where a stream-K fill's fixed cost goes (start skew, join wait), DG_LIFETRACE builds, each
               # case with and without stream-K (FILL_CASES: variant:shape pairs)
         for c in ${FILL_CASES:-256x128s4p:512x7168x2048 128x128s6p:256x7168x2048 128x128s6p:512x2112x7168 256x128s4pc1x2:512x2112x7168}; do
           for sk in 0 1; do
             DEEPERGEMM_NVCC_DEFINES=DG_LIFETRACE DEEPERGEMM_CACHE_DIR=/tmp/dg_lifetrace timeout 90 \
               python bench/lifetrace_case.py --variant ${c%%:*} --shape ${c##*:} --stream-k $sk --launches 10 2>&1 \
               | grep -v "^\[deepergemm\]"
           done
         done | tee "$OUT/fill_trace.log" ;;
    fastlaunch) # the Triton kernels through the cached compiled kernel (triton_kernels/launch.py, opt-in): its GPU
                # test, the Triton kernels' GPU tests with it on, host time per call with and without it, where the
                # rest of a call's host time goes (cProfile)
         timeout 200 env DEEPERGEMM_TEST_SWITCHES=DEEPERGEMM_TRITON_FAST_LAUNCH=1 python -m pytest -q -m gpu \
           tests/test_triton_launch.py tests/test_quantize.py tests/test_swiglu.py tests/test_moe_layout.py \
           -p no:cacheprovider 2>&1 | tee "$OUT/fastlaunch_tests.log" | tail -4
         timeout 150 python bench/host_overhead.py --shapes 1x7168x2048,64x7168x2048,4096x7168x2048 --calls 300 2>&1 \
           | grep -v "^\[deepergemm\]" | tee "$OUT/fastlaunch_host.log"
         for p in "dg.quantize_act" "dg.quantize_act, fast launch" "dg.linear, fast launch"; do
           timeout 40 python bench/host_overhead.py --shapes 1x7168x2048 --calls 2000 --profile "$p" 2>&1 \
             | grep -v "^\[deepergemm\]" | head -40
         done > "$OUT/fastlaunch_profile.log" ;;
    pdl) timeout 200 python bench/pdl_chain.py 2>&1 | grep -v "^\[deepergemm\]" | tee "$OUT/pdl.log" ;;
    ncu) for v in ${NCU_VARIANTS:-128x128s6dc2 128x192s5pc2}; do
           timeout 150 ncu ${NCU_ARGS:---set full} -k regex:fp8_gemm -c 1 \
             python bench/launch_once.py --variant "$v" --shape ${NCU_SHAPE:-4096x7168x16384} --launches 1 \
             > "$OUT/ncu_$v.txt" 2>&1
           grep -E "Throughput|Duration|Busy|Hit Rate|Bandwidth|Issued Ipc|Stall|Bank|Eligible" "$OUT/ncu_$v.txt" | head -40
         done ;;
    ncu-sass) # per-SASS-instruction warp stall samples of one variant (where the math warps wait)
         v=${NCU_VARIANTS%% *}; v=${v:-128x128s6wc2}
         timeout 200 ncu --set full -k regex:fp8_gemm -c 1 -f -o /tmp/prof_$v \
           python bench/launch_once.py --variant "$v" --shape ${NCU_SHAPE:-4096x7168x16384} --launches 1 > /tmp/ncu_sass.log 2>&1
         tail -3 /tmp/ncu_sass.log
         ncu --import /tmp/prof_$v.ncu-rep --page source --csv --print-source sass > "$OUT/sass_$v.csv" 2>&1
         ncu --import /tmp/prof_$v.ncu-rep --page details > "$OUT/ncu_$v.txt" 2>&1
         wc -l "$OUT/sass_$v.csv"; head -3 "$OUT/sass_$v.csv" | cut -c1-600 ;;
    ncu-vs-cublas) # ours and cuBLAS on the same inputs in one process, full ncu sections for both
         v=${NCU_VARIANTS%% *}; v=${v:-128x128s6wc2}
         timeout 300 ncu --set full -k "regex:fp8_gemm|nvjet|sm90" -c 2 -f -o /tmp/vs_cublas \
           python bench/launch_once.py --variant "$v" --shape ${NCU_SHAPE:-4096x7168x16384} --launches 1 --cublas \
           > /tmp/ncu_vs.log 2>&1; tail -3 /tmp/ncu_vs.log
         ncu --import /tmp/vs_cublas.ncu-rep --page details > "$OUT/ncu_vs_cublas.txt" 2>&1
         ncu --import /tmp/vs_cublas.ncu-rep --page raw --csv > "$OUT/ncu_vs_cublas_raw.csv" 2>&1
         grep -E "gemm|nvjet|Duration|Throughput|Issued Ipc|Eligible|Hit Rate" "$OUT/ncu_vs_cublas.txt" | head -40 ;;
    ablate) # one sweep per define set (DEFINE_SETS, ';'-separated, empty = baseline), all sets built in
         # parallel first; outputs are not checked (ablation builds compute wrong results on purpose)
         # unless ABLATE_CHECK=1 (define sets that only reorder the kernel)
         IFS=";" read -ra sets <<< "${DEFINE_SETS:-;DG_PINGPONG=0;DG_ABLATE_PROMOTION;DG_ABLATE_PROMOTION DG_ABLATE_EPILOGUE}"
         for d in "${sets[@]}"; do
           DEEPERGEMM_NVCC_DEFINES="$d" timeout 400 python -m deepergemm warmup --jobs 4 --variants "$LARGE" \
             > "/tmp/warm_${d// /_}.log" 2>&1 &
         done; wait
         for d in "${sets[@]}"; do
           echo "--- defines: ${d:-none}"
           DEEPERGEMM_NVCC_DEFINES="$d" timeout 200 python bench/sweep_variants.py --shapes "${ABLATE_SHAPES:-4096x7168x16384,8192x4096x7168,4096x7168x2048}" \
             --variants "$LARGE" $([ "${ABLATE_CHECK:-0}" = 1 ] || echo --no-check) 2>&1 | grep -v "^\[deepergemm\]"
         done | tee "$OUT/ablate${TAG:-}.log" ;;
    sanitize) for tool in ${SANITIZE_TOOLS:-memcheck racecheck}; do
           timeout ${SANITIZE_TIMEOUT:-240} compute-sanitizer --tool $tool python bench/sanitize_case.py ${SANITIZE_VARIANTS:-} > "$OUT/sanitize_$tool.log" 2>&1
           echo "$tool rc=$?"; tail -4 "$OUT/sanitize_$tool.log"
         done ;;
    *) echo "unknown step $step" ;;
  esac
done
echo "=== done $(date +%T)"
