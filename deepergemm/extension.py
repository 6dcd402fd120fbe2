"""Build the inline-PTX GEMM (ptx/) on first use with torch.utils.cpp_extension.load_inline, cached on disk.

One extension module per kernel variant (configs.Variant), so a process builds only what it runs and
`python -m deepergemm warmup` can build all of them in parallel. The build directory's name is a digest of
the sources, the compile flags and the torch/CUDA versions: a changed source never reuses a stale binary,
and an unchanged one is loaded from disk by later processes in about a second. Builds hold a file lock, so
two processes building the same variant at once wait for each other instead of corrupting the cache.

Cache location: $DEEPERGEMM_CACHE_DIR, else ~/.cache/deepergemm.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import fcntl
import hashlib
import importlib.resources
import os
import pathlib
import sys
import time

import torch

from . import configs

SOURCE_FILES = ("ptx.cuh", "wgmma_gen.cuh", "smem.cuh", "scheduler.cuh", "fp8_gemm.cuh", "binding.cu")
NVCC_FLAGS = ("-O3", "-gencode=arch=compute_90a,code=sm_90a", "--expt-relaxed-constexpr",
              "-Xptxas=-warn-spills", "-lineinfo")
CPP_DECLARATIONS = """
void fp8_gemm(const at::Tensor& a, const at::Tensor& a_scales, const at::Tensor& b, const at::Tensor& b_scales,
              at::Tensor& out, const at::Tensor& bias, int64_t bias_kind, int64_t num_sms, int64_t group_n,
              int64_t l2_hints, const at::Tensor& stream_k_workspace, const at::Tensor& group_rows, int64_t groups,
              int64_t group_stride, const at::Tensor& b_slots, int64_t b_slab_rows, int64_t n_placed,
              const at::Tensor& sm_side, const at::Tensor& side_claims, int64_t side0_n_tiles, int64_t pdl,
              int64_t stream);
std::vector<int64_t> variant_info();
"""
FUNCTIONS = ["fp8_gemm", "variant_info"]

_modules: dict[configs.Variant, object] = {}


def ptx_dir() -> pathlib.Path:
    """The CUDA sources: deepergemm._ptx, i.e. ptx/ in a checkout or inside the installed package."""
    return pathlib.Path(str(importlib.resources.files("deepergemm._ptx")))


def cache_root() -> pathlib.Path:
    root = os.environ.get("DEEPERGEMM_CACHE_DIR")
    return pathlib.Path(root) if root else pathlib.Path.home() / ".cache" / "deepergemm"


def nvcc_flags(variant: configs.Variant) -> list[str]:
    # $DEEPERGEMM_NVCC_DEFINES (space-separated NAME or NAME=VALUE): developers' A/B switches in ptx/,
    # part of the cache key like every other flag.
    extra = os.environ.get("DEEPERGEMM_NVCC_DEFINES", "").split()
    return [*NVCC_FLAGS, *(f"-D{k}={v}" for k, v in variant.compile_defines().items()), *(f"-D{d}" for d in extra)]


def module_name(variant: configs.Variant) -> str:
    digest = hashlib.sha256()
    for name in SOURCE_FILES:
        digest.update(name.encode())
        digest.update((ptx_dir() / name).read_bytes())
    digest.update(" ".join(nvcc_flags(variant)).encode())
    digest.update(f"{torch.__version__}|{torch.version.cuda}|{sys.version_info[:2]}".encode())
    return f"deepergemm_{variant.key}_{digest.hexdigest()[:12]}"


@contextlib.contextmanager
def _file_lock(path: pathlib.Path):
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _say(message: str) -> None:
    print(f"[deepergemm] {message}", file=sys.stderr, flush=True)


def load(variant: configs.Variant):
    """The compiled module of a variant (building it on first use, in this or an earlier process)."""
    module = _modules.get(variant)
    if module is not None:
        return module
    from torch.utils.cpp_extension import load_inline

    name = module_name(variant)
    build_dir = cache_root() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    fresh = not any(build_dir.glob("*.so"))
    start = time.perf_counter()
    if fresh:
        _say(f"building GEMM variant {variant.key} (first use; about a minute) in {build_dir}")
    with _file_lock(build_dir / "deepergemm.lock"):
        module = load_inline(
            name=name,
            cpp_sources=[CPP_DECLARATIONS],
            cuda_sources=[(ptx_dir() / "binding.cu").read_text()],
            functions=FUNCTIONS,
            extra_cuda_cflags=nvcc_flags(variant),
            extra_include_paths=[str(ptx_dir())],
            build_directory=str(build_dir),
            verbose=os.environ.get("DEEPERGEMM_VERBOSE_BUILD") == "1",
        )
    if fresh:
        _say(f"built {variant.key} in {time.perf_counter() - start:.1f} s")
    info = list(module.variant_info())
    expected = [variant.block_m, variant.block_n, variant.stages, variant.acc_mode, variant.cluster_m,
                variant.cluster_n, variant.splits, variant.math_wgs, variant.grouping, variant.smem_bytes,
                int(variant.swapped)]
    if info != expected:
        raise RuntimeError(f"deepergemm: module {name} reports {info}, configs.py expects {expected}: "
                           f"ptx/smem.cuh and configs.Variant.smem_bytes disagree")
    _modules[variant] = module
    return module


def variant_of(module) -> configs.Variant:
    """The variant a module returned by load() was built for."""
    for variant, loaded in _modules.items():
        if loaded is module:
            return variant
    raise ValueError("variant_of: not a module returned by deepergemm.extension.load")


def _build_in_subprocess(variant: configs.Variant) -> str:
    load(variant)
    return variant.key


def build_variants(variants, jobs: int) -> None:
    """Build (or load from the cache) several variants at once, one spawned process per build."""
    start = time.perf_counter()
    _say(f"building {len(variants)} variants with {jobs} jobs into {cache_root()}")
    ctx = __import__("multiprocessing").get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
        for done, key in enumerate(pool.map(_build_in_subprocess, variants), 1):
            _say(f"[{done}/{len(variants)}] {key} ready")
    _say(f"all variants ready in {time.perf_counter() - start:.1f} s")


def default_jobs() -> int:
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def warmup_main(argv: list[str] | None = None) -> int:
    """`python -m deepergemm warmup`: build (or check) every variant configs.py can select."""
    parser = argparse.ArgumentParser(prog="python -m deepergemm warmup", description=warmup_main.__doc__)
    parser.add_argument("--jobs", type=int, default=default_jobs(),
                        help="variants built at once (each nvcc uses about 1.5 GB)")
    parser.add_argument("--variants", default="selectable",
                        help="'selectable' (what configs.select and select_grouped can pick: the default), 'tested' "
                             "(also the cluster shapes the tests cover), or comma-separated keys such as 128x128s6dc2")
    args = parser.parse_args(argv or [])
    if args.variants == "selectable":
        variants = configs.VARIANTS + configs.GROUPED_VARIANTS
    elif args.variants == "tested":
        variants = configs.BUILT_VARIANTS
    else:
        try:
            variants = tuple(configs.parse_key(key.strip()) for key in args.variants.split(","))
        except ValueError as exc:
            parser.error(str(exc))
    build_variants(variants, args.jobs)
    return 0
