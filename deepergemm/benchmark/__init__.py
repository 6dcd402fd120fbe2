"""Benchmarks: side-by-side timings with cold L2 (deepergemm.benchmark.gemm, .quantize)."""
