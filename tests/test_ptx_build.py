"""CI's compile gate for the inline-PTX kernel (no GPU needed): every variant configs.py can select (plain and
grouped) is compiled with nvcc for sm_90a, and fails on any spill or local memory, on ptxas warnings C7510 (a wgmma
pipeline serialized across a function boundary) and C7517 (a wgmma wait injected by ptxas, which
defeats the dual accumulators), on SASS without QGMMA, and on a shared-memory size that disagrees with
configs.Variant.smem_bytes. The generated wgmma header must be current."""
import concurrent.futures
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from deepergemm import configs, extension

ROOT = pathlib.Path(__file__).resolve().parent.parent
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)


def _cuobjdump():
    try:
        import triton
    except ImportError:
        return shutil.which("cuobjdump")
    path = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(path) if path.exists() else shutil.which("cuobjdump")


def test_generated_wgmma_header_is_current():
    sys.path.insert(0, str(ROOT / "ptx"))
    try:
        import gen_wgmma
    finally:
        sys.path.pop(0)
    assert (ROOT / "ptx" / "wgmma_gen.cuh").read_text() == gen_wgmma.generate(), \
        "ptx/wgmma_gen.cuh is stale: run python ptx/gen_wgmma.py"


def _compile(variant: configs.Variant, workdir: pathlib.Path) -> tuple[str, pathlib.Path]:
    src = workdir / f"{variant.key}.cu"
    src.write_text(
        '#include "fp8_gemm.cuh"\n'
        f"using V = dg::GemmTraits<{variant.block_m}, {variant.block_n}, {variant.stages}, {variant.splits}, "
        f"{variant.math_wgs}, {variant.grouping}>;\n"
        f"static_assert(V::Layout::kDynamicBytes == {variant.smem_bytes}, "
        '"configs.Variant.smem_bytes disagrees with dg::SmemLayout");\n'
        f"template __global__ void dg::fp8_gemm_kernel<{variant.template_args}>(const __grid_constant__ CUtensorMap, "
        "const __grid_constant__ CUtensorMap, const __grid_constant__ CUtensorMap, "
        "const __grid_constant__ CUtensorMap, const dg::GemmParams);\n")
    cubin = workdir / f"{variant.key}.cubin"
    flags = [f for f in extension.NVCC_FLAGS if f != "-lineinfo"]
    cmd = [NVCC, *flags, "-std=c++17", "-cubin", "-Xptxas", "-v", "-I", str(ROOT / "ptx"), str(src), "-o", str(cubin)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{variant.key}: nvcc failed\n{proc.stderr[-4000:]}"
    return proc.stderr, cubin


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    if NVCC is None:
        pytest.skip("nvcc not found (CI has /usr/local/cuda/bin/nvcc)")
    workdir = tmp_path_factory.mktemp("ptx_build")
    with concurrent.futures.ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
        results = dict(zip(configs.BUILT_VARIANTS, pool.map(lambda v: _compile(v, workdir), configs.BUILT_VARIANTS)))
    for variant, (report, _) in results.items():  # the ptxas report of each variant, in CI's log
        used = re.search(r"Used (\d+) registers", report)
        print(f"{variant.key}: {used.group(0) if used else '?'}, {variant.smem_bytes} B shared memory")
    return results


@pytest.mark.parametrize("variant", configs.BUILT_VARIANTS, ids=lambda v: v.key)
def test_ptxas_report_is_clean(builds, variant):
    report, _ = builds[variant]
    assert "C7510" not in report, f"{variant.key}: wgmma serialized across a function boundary\n{report}"
    assert "C7517" not in report, f"{variant.key}: ptxas injected a wgmma wait\n{report}"
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    frames = re.findall(r"(\d+) bytes stack frame", report)
    assert spills and frames, f"{variant.key}: no ptxas report\n{report}"
    assert all(s == ("0", "0") for s in spills) and all(f == "0" for f in frames), \
        f"{variant.key}: spills or local memory\n{report}"


@pytest.mark.parametrize("variant", configs.BUILT_VARIANTS, ids=lambda v: v.key)
def test_sass_uses_fp8_wgmma(builds, variant):
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found (pip install triton ships one)")
    _, cubin = builds[variant]
    sass = subprocess.run([tool, "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    wg_n = variant.wg_n
    assert f"QGMMA.64x{wg_n}x32.F32.E4M3.E4M3" in sass, f"{variant.key}: no fp8 wgmma of N={wg_n} in the SASS"
    assert not re.search(r"\b(LDL|STL)\b", sass), f"{variant.key}: local memory in the SASS"
