import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

# One base seed per test session (printed in the header; set DEEPERGEMM_TEST_SEED to replay a run),
# mixed with each test's name: fresh inputs per test and per run, yet every failure can be replayed.
_BASE_SEED = int(os.environ.get("DEEPERGEMM_TEST_SEED", int.from_bytes(os.urandom(4), "little")))


def hopper_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


def pytest_report_header(config):
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return f"deepergemm: DEEPERGEMM_TEST_SEED={_BASE_SEED}, torch {torch.__version__}, GPU: {gpu}"


def pytest_collection_modifyitems(config, items):
    """GPU tests (marked `gpu`) need a Hopper GPU; on any other machine they are skipped, not failed."""
    if hopper_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA Hopper GPU (sm_90)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_per_test(request):
    torch.manual_seed((_BASE_SEED + zlib.crc32(request.node.nodeid.encode())) % (2**63))
    yield


@pytest.fixture
def run_interpreted():
    """run(module): tests/<module>.py's interpreter_cases() in a subprocess with TRITON_INTERPRET=1 (read when
    triton is imported: it cannot be switched on in this process), seeded from this test's seed (replayable);
    it must print "interpreter OK"."""
    def run(module: str) -> None:
        seed = torch.randint(0, 2**31, ()).item()
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import torch; "
                f"torch.manual_seed({seed}); import {module}; {module}.interpreter_cases()")
        env = dict(os.environ, TRITON_INTERPRET="1")
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0 and "interpreter OK" in out.stdout, out.stdout + out.stderr[-4000:]

    return run
