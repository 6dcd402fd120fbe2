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


ALL_TESTS = "python -m pytest -m 'slow or not slow'"  # (the README's test command adds it)


def _slow_left_out(config) -> bool:
    return config.getoption("markexpr", "") == "not slow"


def switches_for_tests(environ=None) -> dict[str, str]:
    """DEEPERGEMM_TEST_SWITCHES="NAME=VALUE,..." (names from configs.SWITCHES): switches every test starts from
    instead of the defaults, to run the suite under a setting (e.g. DEEPERGEMM_PDL=1). A test that sets a switch
    itself still wins; a test of a switch's default sees the setting instead (and may fail for it)."""
    from deepergemm import configs

    text = (os.environ if environ is None else environ).get("DEEPERGEMM_TEST_SWITCHES", "").strip()
    switches = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, eq, value = item.partition("=")
        if not eq or name.strip() not in configs.SWITCHES:
            raise pytest.UsageError(f"DEEPERGEMM_TEST_SWITCHES: {item!r} is not NAME=VALUE with NAME one of "
                                    f"configs.SWITCHES")
        switches[name.strip()] = value.strip()
    return switches


def pytest_report_header(config):
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    lines = [f"deepergemm: DEEPERGEMM_TEST_SEED={_BASE_SEED}, torch {torch.__version__}, GPU: {gpu}"]
    if switches_for_tests():
        lines.append(f"deepergemm: every test starts from DEEPERGEMM_TEST_SWITCHES={switches_for_tests()}")
    if _slow_left_out(config):
        lines.append(f"deepergemm: tests marked slow are left out (the default, -m 'not slow'); {ALL_TESTS} runs "
                     "them too")
    return lines


def pytest_terminal_summary(terminalreporter, config):
    slow = sum("slow" in item.keywords for item in terminalreporter.stats.get("deselected", []))
    if _slow_left_out(config) and slow:
        terminalreporter.write_line(f"deepergemm: {slow} slow test{'s' * (slow != 1)} left out; {ALL_TESTS} runs "
                                    "everything")


def pytest_collection_modifyitems(config, items):
    """GPU tests (marked `gpu`) need a Hopper GPU; on any other machine they are skipped, not failed."""
    if hopper_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA Hopper GPU (sm_90)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _kernels_built_before_the_gpu_tests(request):
    """On a Hopper GPU, build the host binding and every tested kernel variant at once (in parallel) before the
    first GPU test, instead of one by one as the tests first call them."""
    if hopper_available() and any("gpu" in item.keywords for item in request.session.items):
        from deepergemm import configs, extension

        extension.prebuild(configs.BUILT_VARIANTS + (extension.PROBE_UNIT,))
    yield


@pytest.fixture
def monkeypatch():
    """pytest's monkeypatch, except that setting or deleting a DEEPERGEMM_* variable re-reads the switch snapshot
    (configs.reload_switches(), what a user who changes a switch at run time calls), and so does undoing it."""
    from deepergemm import configs

    patch = pytest.MonkeyPatch()
    setenv, delenv = patch.setenv, patch.delenv

    def reloading_setenv(name, value, prepend=None):
        setenv(name, value, prepend)
        if name.startswith("DEEPERGEMM_"):
            configs.reload_switches()

    def reloading_delenv(name, raising=True):
        delenv(name, raising)
        if name.startswith("DEEPERGEMM_"):
            configs.reload_switches()

    patch.setenv, patch.delenv = reloading_setenv, reloading_delenv
    yield patch
    patch.undo()
    configs.reload_switches()


@pytest.fixture(autouse=True)
def _no_switches_from_the_shell(monkeypatch):
    """Every test starts from the default switches, whatever the developer's shell exports (configs.SWITCHES), or
    from DEEPERGEMM_TEST_SWITCHES's (switches_for_tests)."""
    from deepergemm import configs

    for name in configs.SWITCHES:
        monkeypatch.delenv(name, raising=False)
    for name, value in switches_for_tests().items():
        monkeypatch.setenv(name, value)
    yield


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


@pytest.fixture
def no_split_orders(monkeypatch):
    """Split-K and stream-K off: a bf16 GEMM then sums every output in the order a fused-epilogue kernel (fp8 output,
    SwiGLU) does, whichever tile either picks (a split's partial sums join in another order: rare last-bit
    differences). The fused epilogues always run fused (configs.fused_epilogue_pays would run some shapes as the
    bf16 GEMM then the Triton steps: nothing of the fused kernels tested there). The switch snapshot is re-read on
    set and on undo (this file's monkeypatch)."""
    monkeypatch.setenv("DEEPERGEMM_SPLIT_K", "0")
    monkeypatch.setenv("DEEPERGEMM_STREAM_K", "0")
    monkeypatch.setenv("DEEPERGEMM_FUSED_EPILOGUE", "1")
    yield
