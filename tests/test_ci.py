"""CI runs exactly the README's test command, which runs every test, and the README keeps both set-up
commands; a plain `python -m pytest` leaves the slow tests out and says so."""
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _readme_command(which: str) -> str:
    out = subprocess.run([sys.executable, str(ROOT / ".ci" / "readme_command.py"), which],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_readme_has_both_commands():
    assert _readme_command("main").endswith("python -m deepergemm")
    assert "pytest" in _readme_command("tests")


def test_ci_runs_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text()
    assert "pip install --quiet torch==2.13.0" in script
    assert "readme_command.py tests" in script
    assert 'bash -c "$test_cmd"' in script


def _marker_expression(args: list[str]) -> str | None:
    """The -m expression of a pytest command line (the last one wins, as in pytest)."""
    expr = None
    for i, arg in enumerate(args[:-1]):
        if arg == "-m":
            expr = args[i + 1]
    return expr


def _selects(expr: str, **marks: bool) -> bool:
    return eval(expr, {"__builtins__": {}}, marks)  # (-m expressions of plain marker names are Python)


def _pytest_args(command: str) -> list[str]:
    words = shlex.split(command.split("&&")[-1])
    assert words[:3] == ["python", "-m", "pytest"], command
    return words[3:]


def test_default_run_leaves_slow_tests_out_and_ci_runs_them():
    addopts = re.search(r'^addopts = "(.*)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert addopts is not None, "pyproject.toml: no addopts line"
    default = _marker_expression(shlex.split(addopts.group(1)))
    assert not _selects(default, slow=True) and _selects(default, slow=False)
    readme = _marker_expression(shlex.split(addopts.group(1)) + _pytest_args(_readme_command("tests")))
    assert _selects(readme, slow=True) and _selects(readme, slow=False), "the README's command must run everything"


@pytest.mark.slow  # (two pytest processes: ~7 s on 2 cores)
def test_default_run_says_what_it_leaves_out():
    def collect(*args):
        out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-p", "no:cacheprovider", *args,
                              "tests/test_scheduler.py"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        return out.stdout

    plain = collect()
    assert "tests marked slow are left out" in plain and "1 deselected" in plain
    assert "1 slow test left out; python -m pytest -m 'slow or not slow' runs everything" in plain
    full = collect(*_pytest_args(_readme_command("tests")))
    assert "left out" not in full and "deselected" not in full and "1 test collected" in full


def test_suite_can_start_from_given_switches():
    """DEEPERGEMM_TEST_SWITCHES runs the suite under a setting (conftest.switches_for_tests); bad entries are
    refused."""
    from conftest import switches_for_tests

    assert switches_for_tests({}) == {}
    given = {"DEEPERGEMM_TEST_SWITCHES": " DEEPERGEMM_PDL=0, DEEPERGEMM_TRITON_FAST_LAUNCH=1 ,"}
    assert switches_for_tests(given) == {"DEEPERGEMM_PDL": "0", "DEEPERGEMM_TRITON_FAST_LAUNCH": "1"}
    for bad in ("DEEPERGEMM_PDL", "DEEPERGEMM_NOT_A_SWITCH=1", "PATH=/"):
        with pytest.raises(pytest.UsageError, match="configs.SWITCHES"):
            switches_for_tests({"DEEPERGEMM_TEST_SWITCHES": bad})


def test_switches_in_effect_are_the_runs():
    """Each test starts from the defaults (nothing the shell exports), or from DEEPERGEMM_TEST_SWITCHES's values."""
    from conftest import switches_for_tests

    from deepergemm import configs

    given = switches_for_tests()
    assert {name: configs.switches().get(name) for name in configs.SWITCHES} == {
        name: given.get(name, "") for name in configs.SWITCHES}


@pytest.mark.slow  # (one pytest process: ~4 s on 2 cores)
def test_given_switches_reach_every_test():
    env = dict(os.environ, DEEPERGEMM_TEST_SWITCHES="DEEPERGEMM_PDL=0", DEEPERGEMM_SWAP_AB="1")
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "slow or not slow",
                          "tests/test_ci.py", "-k", "switches_in_effect"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert "DEEPERGEMM_TEST_SWITCHES={'DEEPERGEMM_PDL': '0'}" in out.stdout, out.stdout[-2000:]
    assert "1 passed" in out.stdout, out.stdout[-2000:]
