"""Build and load the inline-PTX GEMM: torch-free kernel units and one host binding.

Two kinds of build, both cached on disk:

* **Kernel units** (ptx/kernel_unit.cu): one cubin per variant (configs.Variant), compiled by ``nvcc -cubin`` for
  sm_90a with no host code and no torch header, 2-5 s each, in parallel. A unit depends only on the CUDA sources,
  the flags and the variant, never on torch, so it can be built on any machine with nvcc (no GPU needed) and
  copied: ``python -m deepergemm build --out DIR`` makes a folder of them, and ``$DEEPERGEMM_KERNEL_DIR`` (or the
  package's own ``deepergemm/kernels/``) is searched before the cache, so a GPU machine can use them without
  building. A unit's file name carries a digest of everything it was built from: a changed source or flag never
  picks up a stale cubin.
* **The host binding** (ptx/binding.cpp): plain C++ against torch's headers, built once per torch build (~15 s),
  loaded with ``torch.ops.load_library``. It is the CUDA implementation of the GEMM ops (registered with the
  dispatcher), and loads the units with the CUDA driver API.

Builds hold a file lock and write through a temporary file, so concurrent processes never see half a file.
Cache location: $DEEPERGEMM_CACHE_DIR, else ~/.cache/deepergemm.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import fcntl
import functools
import hashlib
import importlib.resources
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from . import configs

BINDING_SOURCES = ("params.h", "binding.cpp")
NVCC_FLAGS = ("-O3", "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a", "--expt-relaxed-constexpr",
              "-Xptxas=-warn-spills", "-Xptxas=-v", "-lineinfo")
BINDING_CFLAGS = ("-O2",)
KERNEL_DIR_ENV = "DEEPERGEMM_KERNEL_DIR"


class BuildError(RuntimeError):
    """A kernel unit or the host binding failed to build (the message carries the compiler's output)."""


def ptx_dir() -> pathlib.Path:
    """The CUDA sources: deepergemm._ptx, i.e. ptx/ in a checkout or inside the installed package."""
    return pathlib.Path(str(importlib.resources.files("deepergemm._ptx")))


def cache_root() -> pathlib.Path:
    root = os.environ.get("DEEPERGEMM_CACHE_DIR")
    return pathlib.Path(root) if root else pathlib.Path.home() / ".cache" / "deepergemm"


def _say(message: str) -> None:
    print(f"[deepergemm] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _file_lock(path: pathlib.Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # (released by the kernel if the process dies)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------------------------
# toolchain
# ----------------------------------------------------------------------------------------------
def cuda_home() -> pathlib.Path | None:
    """The CUDA toolkit: $CUDA_HOME or $CUDA_PATH, else the toolkit of the nvcc on PATH, else /usr/local/cuda
    (the first of them that holds include/cuda.h)."""
    candidates = [pathlib.Path(os.environ[name]) for name in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(name)]
    if candidates:
        return candidates[0]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(pathlib.Path(nvcc).resolve().parent.parent)
    candidates.append(pathlib.Path("/usr/local/cuda"))
    return next((c for c in candidates if (c / "include" / "cuda.h").exists()), None)


def nvcc_path() -> str | None:
    home = cuda_home()
    if home is not None and (home / "bin" / "nvcc").exists():
        return str(home / "bin" / "nvcc")
    return shutil.which("nvcc")


def toolchain_problem() -> str | None:
    """Why kernel units cannot be built here (None: they can)."""
    if nvcc_path() is None:
        return ("no CUDA compiler: nvcc is not on PATH and neither $CUDA_HOME nor /usr/local/cuda has one (install the "
                "CUDA toolkit 12.4 or newer, or point $DEEPERGEMM_KERNEL_DIR at prebuilt kernels)")
    return None


# ----------------------------------------------------------------------------------------------
# kernel units
# ----------------------------------------------------------------------------------------------
def developer_defines() -> list[str]:
    """$DEEPERGEMM_NVCC_DEFINES (space-separated NAME or NAME=VALUE): developers' A/B switches of ptx/, part of a
    unit's digest like every other flag."""
    return os.environ.get("DEEPERGEMM_NVCC_DEFINES", "").split()


@dataclass(frozen=True)
class UnitSpec:
    """What one kernel unit is built from: a source in ptx/, the headers there, nvcc flags."""
    key: str                   # the file name's prefix: a variant's key, or "l2_probe"
    source: str                # compiled with nvcc -cubin
    flags: tuple[str, ...]

    @property
    def file_name(self) -> str:
        """<key>-<digest of the source, every header of ptx/ and the flags>.cubin"""
        digest = hashlib.sha256(_headers_digest().encode())
        digest.update(self.source.encode())
        digest.update((ptx_dir() / self.source).read_bytes())
        digest.update(" ".join(self.flags).encode())
        return f"{self.key}-{digest.hexdigest()[:16]}.cubin"


@functools.lru_cache(maxsize=1)
def _headers_digest() -> str:
    """Every header of ptx/ (a unit includes some of them; all count, so none can be forgotten)."""
    digest = hashlib.sha256()
    for path in sorted([*ptx_dir().glob("*.cuh"), *ptx_dir().glob("*.h")]):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def kernel_flags(variant: configs.Variant) -> list[str]:
    """nvcc's flags for a variant's unit: its configuration and what configs.py expects of it (the unit checks both
    agree at compile time), then the developers' defines."""
    defines = variant.compile_defines()
    return [*NVCC_FLAGS, *(f"-D{k}={v}" for k, v in defines.items()), *(f"-D{d}" for d in developer_defines())]


def unit_of(what) -> UnitSpec:
    """The unit of a configs.Variant (a UnitSpec is returned as it is)."""
    if isinstance(what, UnitSpec):
        return what
    return UnitSpec(what.key, "kernel_unit.cu", tuple(kernel_flags(what)))


PROBE_UNIT = UnitSpec("l2_probe", "l2_probe.cu", NVCC_FLAGS)


def kernel_file_name(what) -> str:
    return unit_of(what).file_name


def package_kernel_dir() -> pathlib.Path:
    """Prebuilt units shipped inside the package (a wheel built after `python -m deepergemm build --out` there)."""
    return pathlib.Path(__file__).resolve().parent / "kernels"


def kernel_cache_dir() -> pathlib.Path:
    return cache_root() / "kernels"


def kernel_search_dirs() -> list[pathlib.Path]:
    """Where units are looked for, in order: $DEEPERGEMM_KERNEL_DIR (os.pathsep-separated), the package's
    kernels/ folder, the cache (where builds go)."""
    dirs = [pathlib.Path(p) for p in os.environ.get(KERNEL_DIR_ENV, "").split(os.pathsep) if p]
    return [*dirs, package_kernel_dir(), kernel_cache_dir()]


def find_kernel(what) -> pathlib.Path | None:
    """A built unit (of a Variant or a UnitSpec) in the search folders, or None."""
    name = kernel_file_name(what)
    for folder in kernel_search_dirs():
        if (folder / name).is_file():
            return folder / name
    return None


def build_kernel(what, out_dir: pathlib.Path | None = None) -> pathlib.Path:
    """Compile a unit (of a Variant or a UnitSpec) into out_dir (default: the cache) unless it is there already;
    returns the cubin. The ptxas report lands next to it (<name>.log)."""
    spec = unit_of(what)
    out_dir = pathlib.Path(out_dir) if out_dir is not None else kernel_cache_dir()
    target = out_dir / spec.file_name
    if target.is_file():
        return target
    problem = toolchain_problem()
    if problem is not None:
        raise BuildError(f"cannot build kernel unit {spec.key}: {problem}")
    with _file_lock(out_dir / f".{target.stem}.lock"):
        if target.is_file():  # another process built it while we waited
            return target
        tmp = out_dir / f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        cmd = [nvcc_path(), *spec.flags, "-cubin", "-I", str(ptx_dir()), str(ptx_dir() / spec.source), "-o", str(tmp)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not tmp.is_file():
            tmp.unlink(missing_ok=True)
            raise BuildError(f"nvcc failed on kernel unit {spec.key} (exit {done.returncode}):\n"
                             f"{' '.join(cmd)}\n{done.stderr[-6000:]}")
        (out_dir / f"{target.stem}.log").write_text(done.stderr)
        os.replace(tmp, target)
    return target


def default_jobs() -> int:
    """Parallel nvcc processes: one per core (each takes ~0.5-1.5 GB)."""
    return max(1, os.cpu_count() or 1)


def build_kernels(variants, jobs: int | None = None, out_dir: pathlib.Path | None = None,
                  quiet: bool = False) -> dict:
    """Build (or find) several units (Variants or UnitSpecs) at once; progress on stderr. Into out_dir, or the cache
    (where a unit found in a prebuilt folder is not built again). Returns {variant or spec: cubin}."""
    variants = list(dict.fromkeys(variants))
    found = {} if out_dir is not None else {v: find_kernel(v) for v in variants}
    missing = [v for v in variants if found.get(v) is None]
    result = {v: p for v, p in found.items() if p is not None}
    if not missing:
        return result
    jobs = max(1, min(jobs or default_jobs(), len(missing)))
    start = time.perf_counter()
    if not quiet:
        _say(f"building {len(missing)} kernel unit{'s' if len(missing) > 1 else ''} with {jobs} nvcc job"
             f"{'s' if jobs > 1 else ''} into {out_dir or kernel_cache_dir()}")
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        futures = {pool.submit(build_kernel, v, out_dir): v for v in missing}
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            variant = futures[future]
            result[variant] = future.result()
            if not quiet:
                _say(f"[{done}/{len(missing)}] {unit_of(variant).key} ({time.perf_counter() - start:.1f} s)")
    if not quiet:
        _say(f"{len(missing)} kernel unit{'s' if len(missing) > 1 else ''} built in "
             f"{time.perf_counter() - start:.1f} s")
    return result


# ----------------------------------------------------------------------------------------------
# the host binding
# ----------------------------------------------------------------------------------------------
_binding_lock = threading.Lock()
_binding_loaded = False


def binding_name() -> str:
    import torch

    digest = hashlib.sha256()
    for name in BINDING_SOURCES:
        digest.update(name.encode())
        digest.update((ptx_dir() / name).read_bytes())
    digest.update(" ".join(BINDING_CFLAGS).encode())
    digest.update(f"{torch.__version__}|{torch.version.cuda}|{sys.version_info[:2]}".encode())
    return f"deepergemm_binding_{digest.hexdigest()[:16]}"


def binding_problem(require_gpu: bool = True) -> str | None:
    """Why the host binding cannot be built here (None: it can, or it is built already)."""
    import torch

    if require_gpu and not torch.cuda.is_available():
        return "no CUDA GPU (the binding launches kernels on one)"
    home = cuda_home()
    if home is None or not (home / "include" / "cuda.h").exists():
        return "no CUDA headers (cuda.h): install the CUDA toolkit 12.4 or newer, or set $CUDA_HOME"
    return None


def binding_loaded() -> bool:
    return _binding_loaded


def load_binding(require_gpu: bool = True) -> None:
    """Build (once per torch build, ~15 s) and load the host binding; afterwards the GEMM ops' CUDA kernels
    are its C++ functions. Safe to call from several threads and processes. require_gpu=False: also on a machine
    without one (tests of the binding's input rules and its calls into Python on CPU tensors)."""
    global _binding_loaded
    if _binding_loaded:
        return
    with _binding_lock:
        if _binding_loaded:
            return
        problem = binding_problem(require_gpu)
        if problem is not None:
            raise BuildError(f"cannot build the deepergemm host binding: {problem}")
        import torch
        from torch.utils import cpp_extension

        name = binding_name()
        build_dir = cache_root() / name
        build_dir.mkdir(parents=True, exist_ok=True)
        fresh = not (build_dir / f"{name}.so").exists()
        start = time.perf_counter()
        if fresh:
            _say(f"building the host binding for torch {torch.__version__} (once; ~15 s) in {build_dir}")
        # cpp_extension.load, not load_inline: load_inline puts torch/extension.h (pybind11 and all of torch's
        # API) in front of the source, which doubles the build; the binding includes only what it uses.
        try:
            with _file_lock(build_dir / "deepergemm.lock"):
                cpp_extension.load(name=name, sources=[str(ptx_dir() / "binding.cpp")],
                                   extra_cflags=list(BINDING_CFLAGS),
                                   extra_include_paths=[str(ptx_dir()), str(cuda_home() / "include")],
                                   extra_ldflags=["-ldl"], build_directory=str(build_dir),
                                   is_python_module=False,
                                   verbose=os.environ.get("DEEPERGEMM_VERBOSE_BUILD") == "1")
        except Exception as exc:  # the compiler's output is in the exception
            raise BuildError(f"the deepergemm host binding failed to build in {build_dir}: {exc}") from exc
        if fresh:
            _say(f"built the host binding in {time.perf_counter() - start:.1f} s")
        _binding_loaded = True
        configs._reload_hooks.append(_push_switches)
        _push_switches(configs.switches())


def _push_switches(sw: configs.Switches) -> None:
    """The binding's share of the switches (the default backend), and a fresh plan cache."""
    import torch

    torch.ops.deepergemm_native.configure(sw.get("DEEPERGEMM_BACKEND") or "auto")


# ----------------------------------------------------------------------------------------------
# loading a variant
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedKernel:
    """A variant's unit, loaded by the binding: `id` is what torch.ops.deepergemm_native.launch takes."""
    variant: configs.Variant
    id: int
    path: pathlib.Path


_loaded: dict[configs.Variant, LoadedKernel] = {}


def load(variant: configs.Variant) -> LoadedKernel:
    """A variant's unit, loaded (found prebuilt or in the cache, else built now) into the binding."""
    kernel = _loaded.get(variant)
    if kernel is not None:
        return kernel
    import torch

    load_binding()
    path = find_kernel(variant)
    if path is None:
        start = time.perf_counter()
        _say(f"building kernel variant {variant.key} (first use; a few seconds; `python -m deepergemm build` "
             "prebuilds them)")
        path = build_kernel(variant)
        _say(f"built {variant.key} in {time.perf_counter() - start:.1f} s")
    kernel_id = torch.ops.deepergemm_native.load_variant(str(path), variant.binding_info())
    kernel = _loaded[variant] = LoadedKernel(variant, int(kernel_id), path)
    return kernel


def load_probe() -> int:
    """The L2-side probe's unit (ptx/l2_probe.cu), built if needed and loaded: its id for deepergemm_native::l2_probe."""
    import torch

    load_binding()
    path = find_kernel(PROBE_UNIT) or build_kernel(PROBE_UNIT)
    return int(torch.ops.deepergemm_native.load_probe(str(path)))


def prebuild(variants, jobs: int | None = None, binding: bool = True, quiet: bool = False) -> None:
    """Build what the variants (and, with binding=True, the host binding) still need, all at once: the binding's
    C++ build runs beside the nvcc jobs. Nothing is loaded."""
    variants = list(dict.fromkeys(variants))
    worker = None
    errors: list[BaseException] = []
    if binding and not _binding_loaded:
        def build_binding():
            try:
                load_binding()
            except BaseException as exc:  # re-raised below, after the kernels
                errors.append(exc)

        worker = threading.Thread(target=build_binding, name="deepergemm-binding-build")
        worker.start()
    try:
        build_kernels(variants, max(1, (jobs or default_jobs()) - (1 if worker else 0)), quiet=quiet)
    finally:
        if worker is not None:
            worker.join()
    if errors:
        raise errors[0]


def load_all(variants, jobs: int | None = None) -> list:
    """prebuild(variants) in parallel, then load each (the GEMM variants, and the probe where listed)."""
    prebuild(variants, jobs)
    return [load_probe() if v == PROBE_UNIT else load(v) for v in variants]


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------
def _variants_arg(parser: argparse.ArgumentParser, value: str) -> tuple[configs.Variant, ...]:
    if value == "selectable":
        return (configs.VARIANTS + configs.GROUPED_VARIANTS + configs.FP8_OUT_VARIANTS + configs.SWIGLU_VARIANTS
                + configs.GROUPED_SWIGLU_VARIANTS + configs.RECIPE_256_VARIANTS + (PROBE_UNIT,))
    if value == "tested":
        return configs.BUILT_VARIANTS + (PROBE_UNIT,)
    try:
        return tuple(PROBE_UNIT if key.strip() == PROBE_UNIT.key else configs.parse_key(key.strip())
                     for key in value.split(",") if key.strip())
    except ValueError as exc:
        parser.error(str(exc))


def _add_variant_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variants", default="selectable",
                        help="'selectable' (what configs.select, select_grouped, select_fp8_out, select_swiglu and "
                             "select_grouped_swiglu can pick, and the L2-side probe: the default), 'tested' (also the "
                             "variants the tests cover), or "
                             "comma-separated keys such as 128x128s6wc2,l2_probe")
    parser.add_argument("--jobs", type=int, default=default_jobs(), help="nvcc processes at once (default: one per core)")


def build_main(argv: list[str] | None = None) -> int:
    """`python -m deepergemm build`: compile kernel units with nvcc (no GPU needed) into the cache or --out DIR, for
    $DEEPERGEMM_KERNEL_DIR on another machine or the package's kernels/ folder."""
    parser = argparse.ArgumentParser(prog="python -m deepergemm build", description=build_main.__doc__)
    _add_variant_options(parser)
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="folder for the cubins (default: the cache, where this machine looks for them)")
    args = parser.parse_args(argv or [])
    variants = _variants_arg(parser, args.variants)
    problem = toolchain_problem()
    if problem is not None:
        print(f"deepergemm build: {problem}", file=sys.stderr)
        return 2
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    try:
        paths = build_kernels(variants, args.jobs, args.out)
    except BuildError as exc:
        print(f"deepergemm build: {exc}", file=sys.stderr)
        return 1
    folder = args.out or kernel_cache_dir()
    print(f"{len(paths)} kernel units in {folder}" + (f"; use them with {KERNEL_DIR_ENV}={folder}" if args.out else ""))
    return 0


def warmup_main(argv: list[str] | None = None) -> int:
    """`python -m deepergemm warmup`: on a Hopper GPU, build (in parallel) and load the host binding and every
    kernel variant configs.py can select, so that no later call waits for a build."""
    parser = argparse.ArgumentParser(prog="python -m deepergemm warmup", description=warmup_main.__doc__)
    _add_variant_options(parser)
    args = parser.parse_args(argv or [])
    variants = _variants_arg(parser, args.variants)
    import torch

    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        print("deepergemm warmup: needs an NVIDIA Hopper GPU (sm_90) to load the kernels on; `python -m deepergemm "
              "build` compiles them on any machine with nvcc", file=sys.stderr)
        return 2
    problem = binding_problem() or (toolchain_problem() if any(find_kernel(v) is None for v in variants) else None)
    if problem is not None:
        print(f"deepergemm warmup: {problem}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        load_all(variants, args.jobs)
    except BuildError as exc:
        print(f"deepergemm warmup: {exc}", file=sys.stderr)
        return 1
    _say(f"{len(variants)} variants loaded in {time.perf_counter() - start:.1f} s")
    return 0
