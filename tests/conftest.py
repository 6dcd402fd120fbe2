import os
import zlib

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
