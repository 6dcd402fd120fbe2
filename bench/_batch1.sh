set -uo pipefail
OUT=${OUT:-/tmp/dg_out}
export DEEPERGEMM_COMMIT=wip-l2hint
SMALLS=64x2112x7168,64x24576x1536,64x32768x512,64x7168x16384,64x4096x7168,64x7168x2048,128x2112x7168,128x24576x1536,128x32768x512,128x7168x16384,128x4096x7168,128x7168x2048
NCU_VARIANTS=64x32s16d NCU_SHAPE=128x2112x7168 bash bench/device_run.sh ncu-sass 2>&1 | tail -5
LARGE="64x32s16dk2,64x32s16d,64x64s13d,64x128s8d" ABLATE_SHAPES=$SMALLS DEFINE_SETS=";DG_L2_HINT=1" TAG=_l2hint \
  bash bench/device_run.sh ablate 2>&1 | grep -v "^===" | tail -60
timeout 300 python bench/sweep_variants.py --shapes large --variants "auto,256x128s4pc1x2,128x128s6wc2,128x192s5pc2,128x192s5p,128x160s5pc2" --jobs 16 2>&1 | grep -v "^\[deepergemm\]" | tee $OUT/sweep_large_bn.log
timeout 200 python bench/sweep_variants.py --shapes large --variants "256x128s4pc1x2" --group-n 8 2>&1 | grep -v "^\[deepergemm\]" | tee $OUT/sweep_large_g8.log
