"""Print one of the README's set-up commands ("main" or "tests"): the first ```bash block after the
paragraph that introduces it. CI runs the tests command through this, so README and CI cannot drift apart."""
import pathlib
import re
import sys

INTRO = {"main": "Main job:", "tests": "Tests ("}


def readme_command(which: str, text: str) -> str:
    start = text.index(INTRO[which])
    block = re.search(r"```bash\n(.*?)\n```", text[start:], re.S)
    if block is None:
        raise SystemExit(f"README.md: no ```bash block after {INTRO[which]!r}")
    return block.group(1).strip()


if __name__ == "__main__":
    readme = pathlib.Path(__file__).resolve().parent.parent / "README.md"
    print(readme_command(sys.argv[1], readme.read_text()))
