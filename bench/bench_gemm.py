"""GEMM benchmark vs cuBLAS: the same as `python -m deepergemm bench ...` (options: --help).

    python bench/bench_gemm.py --shapes small --markdown
"""
import sys
from pathlib import Path

try:
    from deepergemm.benchmark.gemm import main
except ImportError:  # run from a checkout without installing: the package sits one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from deepergemm.benchmark.gemm import main

if __name__ == "__main__":
    sys.exit(main())
