"""Developer tool: two `python -m deepergemm bench --markdown` outputs side by side, shape by shape (a change that
must not change speed, e.g. a refactor: "within 1% of the per-shape times, same call, before/after").

    python bench/compare_benches.py BEFORE.log AFTER.log [--tolerance 0.01]

Prints, per shape, ours before and after (us), after / before, and cuBLAS before / after (how much the machine
itself drifted between the two runs); then the shapes whose time moved by more than the tolerance beyond the
cuBLAS drift. Exit status 1 when there are such shapes.
"""
import argparse
import pathlib
import sys


def read_table(path: pathlib.Path) -> dict[str, dict[str, float]]:
    rows, header = {}, None
    for line in path.read_text().splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "shape":
            header = cells
            continue
        if header is None or set(cells[0]) <= {"-", " "}:
            continue
        row = {}
        for name, cell in zip(header, cells):
            try:
                row[name] = float(cell)
            except ValueError:
                pass
        rows[cells[0]] = row
    if not rows:
        raise SystemExit(f"{path}: no bench table (run the bench with --markdown)")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=pathlib.Path)
    parser.add_argument("after", type=pathlib.Path)
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--backend", default="ptx")
    args = parser.parse_args()
    before, after = read_table(args.before), read_table(args.after)
    key, base = f"{args.backend} us", "cublas us"
    print(f"| shape | {args.backend} before us | after us | after/before | cuBLAS before/after |")
    print("|---|---:|---:|---:|---:|")
    moved = []
    for shape, row in before.items():
        new = after.get(shape)
        if new is None or key not in row or key not in new:
            print(f"| {shape} | {row.get(key, 'n/a')} | missing | | |")
            continue
        ratio = new[key] / row[key]
        drift = row[base] / new[base] if base in row and base in new else 1.0
        print(f"| {shape} | {row[key]:.1f} | {new[key]:.1f} | {ratio:.3f} | {drift:.3f} |")
        if abs(ratio * drift - 1.0) > args.tolerance and abs(ratio - 1.0) > args.tolerance:
            moved.append((shape, ratio, drift))
    for shape, ratio, drift in moved:
        print(f"moved: {shape} after/before {ratio:.3f} (cuBLAS drift {drift:.3f})")
    print(f"{len(moved)} of {len(before)} shapes moved by more than {args.tolerance:.0%}")
    return 1 if moved else 0


if __name__ == "__main__":
    sys.exit(main())
