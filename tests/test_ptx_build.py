"""CI's compile gate for the kernel units (no GPU needed): every variant configs.py can select or the tests cover
(plain, swapped and grouped) is built exactly as users get it, by `python -m deepergemm build` (nvcc -cubin of
ptx/kernel_unit.cu, the same flags), and fails on any spill or local memory, on ptxas warnings C7510 (a wgmma
pipeline serialized across a function boundary) and C7517 (a wgmma wait injected by ptxas, which defeats the dual
accumulators), on SASS without QGMMA, on a unit that does not hold exactly one kernel (the binding loads a unit by
enumerating its kernels), and on a shared-memory size, thread count or epilogue box that disagrees with
configs.Variant (kernel_unit.cu's static_asserts). The generated wgmma header must be current."""
import pathlib
import re
import shutil
import struct
import subprocess
import sys

import pytest

from deepergemm import configs, extension

ROOT = pathlib.Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # (47 nvcc builds: about a minute on 16 cores, five on 2)


def _cuobjdump():
    try:
        import triton
    except ImportError:
        return shutil.which("cuobjdump")
    path = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(path) if path.exists() else shutil.which("cuobjdump")


def test_generated_wgmma_header_is_current():
    sys.path.insert(0, str(ROOT / "ptx"))
    try:
        import gen_wgmma
    finally:
        sys.path.pop(0)
    assert (ROOT / "ptx" / "wgmma_gen.cuh").read_text() == gen_wgmma.generate(), \
        "ptx/wgmma_gen.cuh is stale: run python ptx/gen_wgmma.py"


def _sass_lines(cubin: pathlib.Path) -> list[str]:
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found (pip install triton ships one)")
    out = subprocess.run([tool, "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    return [line.split("*/", 1)[1].split(";")[0].strip() for line in out.splitlines()
            if re.match(r"\s+/\*[0-9a-f]{4}\*/", line)]


def kernel_sections(cubin: pathlib.Path) -> list[str]:
    """Names of the kernels in a cubin: its ELF sections `.text.<mangled name>` (every device function of the
    kernel is inlined into it, so each .text section is a kernel)."""
    data = cubin.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, f"{cubin} is not a 64-bit ELF"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_at = headers[shstrndx][4]

    def name(offset: int) -> str:
        end = data.index(b"\0", names_at + offset)
        return data[names_at + offset:end].decode()

    return [name(h[0])[len(".text."):] for h in headers if name(h[0]).startswith(".text.")]


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    if extension.toolchain_problem() is not None:
        pytest.skip("nvcc not found (CI has /usr/local/cuda/bin/nvcc)")
    out = tmp_path_factory.mktemp("kernels")
    from deepergemm.__main__ import main

    assert main(["build", "--variants", "tested", "--out", str(out)]) == 0
    results = {}
    for variant in configs.BUILT_VARIANTS:
        cubin = out / extension.kernel_file_name(variant)
        report = cubin.with_suffix(".log").read_text()
        results[variant] = (report, cubin)
        used = re.search(r"Used (\d+) registers", report)  # the ptxas report of each variant, in CI's log
        print(f"{variant.key}: {used.group(0) if used else '?'}, {variant.smem_bytes} B shared memory")
    return out, results


@pytest.mark.parametrize("variant", configs.BUILT_VARIANTS, ids=lambda v: v.key)
def test_ptxas_report_is_clean(builds, variant):
    report, _ = builds[1][variant]
    assert "C7510" not in report, f"{variant.key}: wgmma serialized across a function boundary\n{report}"
    assert "C7517" not in report, f"{variant.key}: ptxas injected a wgmma wait\n{report}"
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    frames = re.findall(r"(\d+) bytes stack frame", report)
    assert spills and frames, f"{variant.key}: no ptxas report\n{report}"
    assert all(s == ("0", "0") for s in spills) and all(f == "0" for f in frames), \
        f"{variant.key}: spills or local memory\n{report}"


@pytest.mark.parametrize("variant", configs.BUILT_VARIANTS, ids=lambda v: v.key)
def test_unit_holds_one_kernel_of_the_variant(builds, variant):
    _, cubin = builds[1][variant]
    kernels = kernel_sections(cubin)
    assert len(kernels) == 1 and kernels[0].startswith("_ZN2dg15fp8_gemm_kernelINS_12KernelConfigILi"), kernels
    # the configuration in the mangled name is the variant's (KernelConfigILi128ELi128ELi6E... = <128, 128, 6, ...>)
    args = [int(v) for v in re.findall(r"Li(-?\d+)E", kernels[0])]
    assert args == [variant.block_m, variant.block_n, variant.stages, variant.acc_mode, variant.cluster_m,
                    variant.cluster_n, variant.splits, variant.math_wgs, variant.grouping, int(variant.swapped),
                    variant.fp8_out_mode], \
        (variant.key, kernels[0])


def test_the_l2_probe_is_a_unit_too(builds):
    cubin = builds[0] / extension.PROBE_UNIT.file_name
    assert kernel_sections(cubin) == ["_ZN2dg15l2_probe_kernelEPKjPKliiijPjPi"]
    report = cubin.with_suffix(".log").read_text()
    assert "0 bytes spill stores" in report and "0 bytes stack frame" in report, report


def test_the_l2_probe_times_its_chain_of_loads(builds):
    """The probe's clock reads enclose its dependent L2 loads in the machine code: without a use of the loaded
    value ptxas deleted the whole chain and every latency read 0. Each clock read follows an instruction that
    reads the last loaded value (in-order issue: it waits for the load)."""
    sass = _sass_lines(builds[0] / extension.PROBE_UNIT.file_name)
    clocks = [i for i, text in enumerate(sass) if "SR_CLOCKLO" in text]
    assert len(clocks) >= 2, clocks
    loads = [i for i, text in enumerate(sass) if text.startswith(("LDG.E.STRONG.GPU", "@P0 LDG.E.STRONG.GPU"))]
    assert any(clocks[0] < i < clocks[-1] for i in loads), "no L2 load between the clock reads"
    for i in (clocks[0], clocks[-1]):
        loaded = {re.match(r"(?:@!?P\d )?LDG\S* (R\d+)", sass[j]).group(1) for j in loads if j < i}
        before = sass[i - 1]
        assert any(re.search(rf"\b{reg}\b", before.split(",", 1)[-1]) for reg in loaded), (before, loaded)


@pytest.mark.parametrize("variant", configs.BUILT_VARIANTS, ids=lambda v: v.key)
def test_sass_uses_fp8_wgmma(builds, variant):
    sass = "\n".join(_sass_lines(builds[1][variant][1]))
    wg_n = variant.wg_n
    assert f"QGMMA.64x{wg_n}x32.F32.E4M3.E4M3" in sass, f"{variant.key}: no fp8 wgmma of N={wg_n} in the SASS"
    assert not re.search(r"\b(LDL|STL)\b", sass), f"{variant.key}: local memory in the SASS"


def test_one_configuration_order_from_python_to_the_kernel():
    """configs.KERNEL_CONFIG_MACROS name dg::KernelConfig's template parameters in its order (ptx/config.cuh), and
    kernel_unit.cu instantiates it from them in that order."""
    config = (ROOT / "ptx" / "config.cuh").read_text()
    params = re.search(r"template <(int BLOCK_M[^>]*)>\s*struct KernelConfig", config).group(1)
    names = [p.split()[-1] for p in params.split(",")]
    assert ["DG_" + name for name in names] == list(configs.KERNEL_CONFIG_MACROS)
    unit = (ROOT / "ptx" / "kernel_unit.cu").read_text()
    used = re.search(r"KernelConfig<([^>]*)>", unit).group(1)
    assert [m.strip() for m in used.split(",")] == list(configs.KERNEL_CONFIG_MACROS)
    variant = configs.parse_key("128x176s5pc2")
    defines = variant.compile_defines()
    assert [defines[m] for m in configs.KERNEL_CONFIG_MACROS] == [128, 176, 5, 0, 2, 1, 1, 2, 0, 0, 0]


def test_prebuilt_folder_is_found_through_the_environment(builds, monkeypatch, tmp_path):
    folder, _ = builds
    variant = configs.VARIANTS[0]
    monkeypatch.setenv("DEEPERGEMM_CACHE_DIR", str(tmp_path / "empty-cache"))
    assert extension.find_kernel(variant) is None
    monkeypatch.setenv(extension.KERNEL_DIR_ENV, str(folder))
    assert extension.find_kernel(variant) == folder / extension.kernel_file_name(variant)
    # found, not rebuilt: build_kernels returns the prebuilt path and writes nothing to the cache
    assert extension.build_kernels([variant], quiet=True) == {variant: folder / extension.kernel_file_name(variant)}
    assert not (tmp_path / "empty-cache").exists()


def test_a_static_assert_catches_a_layout_python_got_wrong(tmp_path, monkeypatch):
    """kernel_unit.cu checks configs.Variant's shared-memory size against dg::SmemLayout at compile time."""
    if extension.toolchain_problem() is not None:
        pytest.skip("nvcc not found")
    variant = configs.VARIANTS[0]
    flags = [f for f in extension.kernel_flags(variant) if not f.startswith("-DDG_EXPECT_SMEM_BYTES=")]
    flags.append(f"-DDG_EXPECT_SMEM_BYTES={variant.smem_bytes + 16}")
    done = subprocess.run([extension.nvcc_path(), *flags, "-cubin", "-I", str(ROOT / "ptx"),
                           str(ROOT / "ptx" / "kernel_unit.cu"), "-o", str(tmp_path / "x.cubin")],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "configs.Variant.smem_bytes disagrees" in done.stderr, done.stderr[-2000:]


def test_concurrent_builds_of_one_unit_are_safe(tmp_path):
    """Two processes building the same unit into the same folder at once: one builds (under the file lock), the
    other waits and finds it; both get the same complete cubin, and no temporary file is left."""
    if extension.toolchain_problem() is not None:
        pytest.skip("nvcc not found")
    code = ("import sys; from deepergemm import configs, extension; "
            "print(extension.build_kernel(configs.parse_key('64x32s16dm1'), sys.argv[1]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    paths = {p.communicate(timeout=300)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs) and len(paths) == 1, paths
    cubin = pathlib.Path(paths.pop())
    assert len(kernel_sections(cubin)) == 1
    assert sorted(f.name for f in tmp_path.iterdir() if not f.name.startswith(".")) == sorted(
        [cubin.name, cubin.with_suffix(".log").name])
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))



@pytest.mark.parametrize("variant", configs.BUILT_VARIANTS, ids=lambda v: v.key)
def test_wgmma_descriptors_stay_in_uniform_registers(builds, variant):
    """Every QGMMA's shared-memory descriptor pair is computed in uniform registers, never moved there from vector
    registers (R2UR) just before: that happens when ptxas takes the math loop for divergent (a branch on a value it
    cannot prove warp-uniform), and it keeps the ring position and descriptors in vector registers, rebuilding each
    descriptor with 64-bit IADD/IMAD.X and two R2URs (the grouped kernels did: 14% slower than dense, ptx/NOTES.md;
    9 to 12 of their 16 QGMMAs). A single one in a unit is tolerated (64x64s13p has 1 of 8: one step's first
    descriptor, left as it is): more than one QGMMA in four fails."""
    sass = _sass_lines(builds[1][variant][1])
    qgmmas = sum(1 for text in sass if "QGMMA" in text)
    moved = []
    for i, text in enumerate(sass):
        m = re.search(r"QGMMA\S* \S+, gdesc\[UR(\d+)\]", text)
        if not m:
            continue
        pair = {f"UR{int(m.group(1))}", f"UR{int(m.group(1)) + 1}"}
        for j in range(i - 1, max(-1, i - 40), -1):  # the last writer of either register of the pair
            words = re.sub(r"^@!?U?P\w+ ", "", sass[j]).replace(",", " ").split()
            if len(words) > 1 and words[1] in pair:
                if words[0].startswith("R2UR"):
                    moved.append(f"{sass[j]} -> {text}")
                break
    assert qgmmas and len(moved) * 4 <= qgmmas, \
        f"{variant.key}: {len(moved)} of {qgmmas} wgmma descriptors from vector registers:\n" + "\n".join(moved[:4])


@pytest.mark.parametrize("key", ("128x128s6w", "64x32s16dm1", "128x192s5pc2", "256x128s4pc1x2"))
def test_the_tile_in_place_build_stays_clean(tmp_path, monkeypatch, key):
    """DG_NO_TILE_SHIFT (the developers' define that keeps the part-filled last M-tile in place, where by default it
    moves up to end at the last row: producer.cuh kMovesLastTile) times what the move buys; its build must keep
    compiling without a serialized wgmma or spills, and must differ from the default build (the define reaches the
    unit)."""
    if extension.toolchain_problem() is not None:
        pytest.skip("nvcc not found")
    variant = configs.parse_key(key)
    default = extension.build_kernel(variant, str(tmp_path / "default"))
    monkeypatch.setenv("DEEPERGEMM_NVCC_DEFINES", "DG_NO_TILE_SHIFT")
    in_place = extension.build_kernel(variant, str(tmp_path / "in_place"))
    assert pathlib.Path(in_place).name != pathlib.Path(default).name  # the define is part of the unit's digest
    report = pathlib.Path(in_place).with_suffix(".log").read_text()
    assert "C7510" not in report and "C7517" not in report, report
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    assert spills and all(s == ("0", "0") for s in spills), report
    assert pathlib.Path(in_place).read_bytes() != pathlib.Path(default).read_bytes()
