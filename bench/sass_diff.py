"""Developer tool (no GPU needed): did a change of ptx/ change the machine code? Compares the SASS of two folders of
kernel units (`python -m deepergemm build --variants tested --out DIR` before and after), variant by variant,
ignoring addresses, encodings and symbol names.

    python bench/sass_diff.py BEFORE_DIR AFTER_DIR [--variants tested|selectable|KEY,...] [--show 20]

Per variant: "same", or the instruction counts that moved (QGMMA, FFMA, loads, stores, branches, barriers) and the
first differing lines with --show. The main loops' wgmma and promotion sequences are what issue 23 requires to stay
unchanged or better.
"""
import argparse
import collections
import difflib
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from deepergemm import configs, extension  # noqa: E402

INSTRUCTION = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;")
WATCH = ("QGMMA", "FFMA", "LDS", "STS", "LDG", "STG", "UTMALDG", "UTMASTG", "BRA", "SYNCS", "WARPGROUP", "BAR", "STSM")


def cuobjdump() -> str:
    import triton

    path = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(path)


def instructions(cubin: pathlib.Path) -> list[str]:
    sass = subprocess.run([cuobjdump(), "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    out = []
    for line in sass.splitlines():
        match = INSTRUCTION.search(line)
        if match:
            text = re.sub(r"0x[0-9a-f]+", "#", match.group(1))  # branch targets and immediates that are addresses
            out.append(text)
    return out


def opcode_counts(lines: list[str]) -> collections.Counter:
    counts = collections.Counter()
    for line in lines:
        op = line.split()[0] if not line.startswith("@") else line.split()[1]
        for watch in WATCH:
            if op.startswith(watch):
                counts[watch] += 1
    return counts


def same_bank_promotions(lines: list[str]) -> tuple[int, int, int]:
    """(promotion FFMAs, those whose partial and total share a register's parity, ... its value mod 4): the
    promotion adds partial * scale into the total it writes (FFMA Rt, Rp, Rs, Rt); two reads from one bank cost an
    issue slot."""
    total = mod2 = mod4 = 0
    for line in lines:
        parts = line.replace(",", " ").split()
        if parts and parts[0].startswith("@"):
            parts = parts[1:]
        if len(parts) < 5 or not parts[0].startswith("FFMA"):
            continue
        regs = [int(x.split(".")[0][1:]) if x.startswith("R") and x[1:].split(".")[0].isdigit() else None
                for x in parts[1:5]]
        if None in regs or regs[0] != regs[3]:
            continue
        total += 1
        mod2 += regs[1] % 2 == regs[3] % 2
        mod4 += regs[1] % 4 == regs[3] % 4
    return total, mod2, mod4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=pathlib.Path)
    parser.add_argument("after", type=pathlib.Path)
    parser.add_argument("--variants", default="tested")
    parser.add_argument("--show", type=int, default=0, help="print this many differing lines per variant")
    parser.add_argument("--ops", default="",
                        help="compare only these opcodes' instructions (operands included), e.g. QGMMA,FFMA: the main "
                             "loops' tensor-core and promotion sequences")
    args = parser.parse_args()
    variants = extension._variants_arg(parser, args.variants)
    changed = 0
    for v in variants:
        key = extension.unit_of(v).key
        before = sorted(args.before.glob(f"{key}-*.cubin"))
        after = sorted(args.after.glob(f"{key}-*.cubin"))
        if len(before) != 1 or len(after) != 1:
            print(f"{key:>18}: missing ({len(before)} before, {len(after)} after)")
            changed += 1
            continue
        a, b = instructions(before[0]), instructions(after[0])
        banks = f"; same-bank promotion FFMAs (of, mod 2, mod 4) {same_bank_promotions(a)} -> {same_bank_promotions(b)}"
        if args.ops:
            ops = tuple(args.ops.split(","))
            keep = lambda line: (line.split()[1] if line.startswith("@") else line.split()[0]).startswith(ops)  # noqa: E731
            a, b = [x for x in a if keep(x)], [x for x in b if keep(x)]
        if a == b:
            print(f"{key:>18}: same ({len(a)} instructions{banks if args.ops else ''})")
            continue
        changed += 1
        ca, cb = opcode_counts(a), opcode_counts(b)
        moved = ", ".join(f"{op} {ca[op]}->{cb[op]}" for op in WATCH if ca[op] != cb[op]) or "same counts, other order"
        print(f"{key:>18}: DIFFERS ({len(a)} -> {len(b)} instructions; {moved}{banks})")
        if args.show:
            diff = [d for d in difflib.unified_diff(a, b, lineterm="", n=0) if not d.startswith(("---", "+++", "@@"))]
            for line in diff[: args.show]:
                print(f"{'':>20}{line}")
    print(f"{changed} of {len(variants)} units differ")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
