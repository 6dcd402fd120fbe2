"""CI's compile check of the extension's host code (ptx/binding.cu: tensor maps, launch configuration, input
checks), which the kernel compile gate (test_ptx_build.py) does not build: with the torch headers of this
machine's CPU wheel, for a plain split-K variant, a swapped one and a grouped one, so a mistake there fails here
and not first on the GPU machine. (About a minute per variant, in parallel.)"""
import concurrent.futures
import os
import pathlib
import shutil
import subprocess
import sysconfig

import pytest

from deepergemm import configs, extension

ROOT = pathlib.Path(__file__).resolve().parent.parent
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
KEYS = ("64x32s16dk2m1", "64x16s16dk4m1t", "128x128s6wc2gm")


def _build(key: str, workdir: pathlib.Path) -> subprocess.CompletedProcess:
    from torch.utils.cpp_extension import include_paths

    variant = configs.parse_key(key)
    defines = [f"-D{k}={v}" for k, v in variant.compile_defines().items()]
    includes = [f"-I{p}" for p in include_paths()] + [f"-I{sysconfig.get_paths()['include']}", f"-I{ROOT / 'ptx'}"]
    cmd = [NVCC, "-std=c++17", "-O0", "-gencode=arch=compute_90a,code=sm_90a", "--expt-relaxed-constexpr",
           "-DTORCH_EXTENSION_NAME=binding_check", *defines, *includes, "-c", str(ROOT / "ptx" / "binding.cu"),
           "-o", str(workdir / f"{key}.o")]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_binding_compiles_for_plain_swapped_and_grouped_variants(tmp_path):
    if NVCC is None:
        pytest.skip("nvcc not found (CI has /usr/local/cuda/bin/nvcc)")
    assert set(KEYS) <= {v.key for v in configs.BUILT_VARIANTS}, "pick built variants"
    assert extension.SOURCE_FILES[-1] == "binding.cu"
    with concurrent.futures.ThreadPoolExecutor(max(1, min(len(KEYS), os.cpu_count() or 1))) as pool:
        results = dict(zip(KEYS, pool.map(lambda key: _build(key, tmp_path), KEYS)))
    for key, done in results.items():
        errors = [line for line in done.stderr.splitlines() if " error" in line or "error:" in line]
        assert done.returncode == 0 and not errors, f"{key}: binding.cu does not compile\n{done.stderr[-4000:]}"
