"""The persistent tile scheduler (ptx/scheduler.cuh), run on the CPU: tests/scheduler_check.cu builds it as
host code with nvcc and walks every CTA of many grids (clusters of 1, 2 and 4 CTAs, split-K, stream-K
tails; K of 1 to 56 blocks), checking that every K block of every tile runs exactly once, that a cluster's
CTAs agree, that the producers' walk equals the published steps, and that each stream-K tile is cut at most
once, its head written by cluster c - 1 first thing and its tail joined by cluster c last (no GPU needed).
"""
import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)


@pytest.mark.slow  # (an nvcc build and a walk of every grid: ~15 s on 2 cores)
def test_scheduler_partitions_every_grid(tmp_path):
    if NVCC is None:
        pytest.skip("nvcc not found (CI has /usr/local/cuda/bin/nvcc)")
    exe = tmp_path / "scheduler_check"
    build = subprocess.run([NVCC, "-std=c++17", "-O1", "-I", str(ROOT / "ptx"), "-o", str(exe),
                            str(ROOT / "tests" / "scheduler_check.cu")], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "scheduler ok" in run.stdout, run.stdout[-4000:]
