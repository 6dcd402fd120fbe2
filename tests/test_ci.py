"""CI runs exactly the README's test command, and the README keeps both set-up commands."""
import pathlib
import subprocess
import sys

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
