set -uo pipefail
OUT=${OUT:-/tmp/dg_out}
pip install -q -e . --no-deps --no-build-isolation > /tmp/install.log 2>&1 || { cat /tmp/install.log; exit 1; }
timeout 240 python bench/sweep_variants.py --shapes small --variants "auto,64x32s16dk2,64x32s16d,64x64s13d,64x128s8d" --l2-hints 0,6,2,4 --jobs 16 2>&1 | grep -v "^\[deepergemm\]" > $OUT/sweep_small_hints.log
tail -3 $OUT/sweep_small_hints.log
timeout 240 python bench/sweep_variants.py --shapes large --variants "auto,128x128s6wc2" --jobs 16 2>&1 | grep -v "^\[deepergemm\]" > $OUT/sweep_large.log
tail -3 $OUT/sweep_large.log
