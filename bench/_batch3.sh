set -uo pipefail
OUT=${OUT:-/tmp/dg_out}
pip install -q -e . --no-deps --no-build-isolation > /tmp/install.log 2>&1 || { cat /tmp/install.log; exit 1; }
SV="64x32s16dk2,64x32s16d,64x64s13d,64x128s8d"; LV="256x128s4pc1x2,128x128s6wc2"
sets=("DG_PRODUCERS=1" "DG_PRODUCERS=2" "")
for d in "${sets[@]}"; do
  DEEPERGEMM_NVCC_DEFINES="$d" timeout 400 python -m deepergemm warmup --jobs 5 --variants "$SV,$LV" > /tmp/w.log 2>&1 &
done; wait
for d in "${sets[@]}"; do
  echo "--- defines: ${d:-DG_PRODUCERS=3}"
  DEEPERGEMM_NVCC_DEFINES="$d" timeout 200 python bench/sweep_variants.py --shapes small --variants "$SV" --l2-hints 0,6,2 2>&1 | grep -v "^\[deepergemm\]"
  DEEPERGEMM_NVCC_DEFINES="$d" timeout 200 python bench/sweep_variants.py --shapes 4096x7168x16384,8192x2112x7168,4096x2112x7168,8192x4096x7168,4096x32768x512 --variants "$LV" 2>&1 | grep -v "^\[deepergemm\]"
done > $OUT/producers.log
grep -c FAIL $OUT/producers.log; tail -2 $OUT/producers.log
