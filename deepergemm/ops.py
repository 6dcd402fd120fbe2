"""The one place that registers deepergemm's custom ops: schemas, CPU, CUDA and fake kernels.

Ops (``torch.ops.deepergemm.*``):
  quantize_act(Tensor x, bool ue8m0=False) -> (Tensor q, Tensor scales)
  quantize_weight(Tensor w, bool ue8m0=False) -> (Tensor q, Tensor scales)
  fp8_gemm(Tensor a, Tensor a_scales, Tensor b, Tensor b_scales, ScalarType out_dtype=bfloat16,
           Tensor? bias=None, str backend="auto") -> Tensor
  fp8_gemm_fp8_out(Tensor a, Tensor a_scales, Tensor b, Tensor b_scales, Tensor? bias=None, bool ue8m0=False,
                   str backend="auto") -> (Tensor q, Tensor scales)   (the output quantized as quantize_act would)
  fp8_gemm_swiglu(Tensor a, Tensor a_scales, Tensor b, Tensor b_scales, bool ue8m0=False, str backend="auto")
                  -> (Tensor q, Tensor scales)   (quantize_act(swiglu(the bf16 GEMM)), b gate/up interleaved per 128)
  swiglu(Tensor gate_up) -> Tensor   (SwiGLU of an interleaved gate/up bf16 output: triton_kernels/swiglu.py)
  fp8_gemm_placed(Tensor a, Tensor a_scales, Tensor pool, Tensor slots, Tensor b_scales, int n, int slab_rows,
                  int split_rows, ScalarType out_dtype=bfloat16, Tensor? bias=None, Tensor? sm_side=None,
                  bool side_aware=True, str backend="auto") -> Tensor   (B placed by L2 side: l2_placement)
  linear(Tensor x, Tensor w, Tensor w_scales, Tensor? bias=None, str backend="auto") -> Tensor
  m_grouped_fp8_gemm_contiguous(Tensor a, Tensor a_scales, Tensor b, Tensor b_scales, Tensor group_sizes,
                                Tensor(a!) out, bool zero_padding=False, str backend="auto") -> ()
  m_grouped_fp8_gemm_masked(Tensor a, Tensor a_scales, Tensor b, Tensor b_scales, Tensor masked_m,
                            int expected_m, Tensor(a!) out, str backend="auto") -> ()
  m_grouped_fp8_gemm_contiguous_swiglu(Tensor a, Tensor a_scales, Tensor b, Tensor b_scales, Tensor group_sizes,
                                       int expected_m=0, bool ue8m0=False, str backend="auto")
                                       -> (Tensor q, Tensor scales)
  m_grouped_fp8_gemm_masked_swiglu(Tensor a, Tensor a_scales, Tensor b, Tensor b_scales, Tensor masked_m,
                                   int expected_m, bool ue8m0=False, str backend="auto") -> (Tensor q, Tensor scales)
                  (quantize_act(swiglu(the grouped bf16 GEMM)), each expert's b rows gate then up)

CPU kernels run the pure-torch reference (deepergemm.reference); fake kernels give shapes, dtypes and strides
only, so the ops trace under torch.compile(fullgraph=True) and replay in CUDA graphs (no host sync, no
allocation outside PyTorch's caching allocator). The quantizers, linear and the GEMM ops are defined with
torch.library.Library (not custom_op, whose Python autograd wrapper costs ~10 us a call; none has a backward). CUDA:
the quantizers run Triton kernels; the eight GEMM ops' CUDA kernels are C++ (ptx/binding.cpp, loaded by
deepergemm/extension.py): input rules, plan and launch with no Python in between. Until that binding is loaded, a
CompositeExplicitAutograd kernel stands in: it loads the binding on first use (on a Hopper GPU) and calls the op
again, or runs the Python CUDA path (cuBLAS) where the binding cannot be built. The binding calls back into Python
only for a problem's first plan (_plan) and for the Python backends (_<op>_python: cuBLAS, the reference).

GEMM backends (``backend=`` or the environment variable DEEPERGEMM_BACKEND, which sets "auto"):
  "ptx"       deepergemm's inline-PTX wgmma kernel (Hopper, sm_90)
  "cublas"    torch._scaled_mm with blockwise scales (any GPU cuBLASLt supports it on)
  "reference" the fp32 reference (slow; any device)
  "auto"      ptx when available on this GPU, else cublas (CUDA); reference on CPU
"""
from __future__ import annotations

import warnings

import torch
from torch.library import custom_op

from . import configs, layouts, reference
from .layouts import GROUP_K, ceil_div

BACKENDS = ("auto", "ptx", "cublas", "reference")
_ENV_BACKEND = "DEEPERGEMM_BACKEND"
_lib = torch.library.Library("deepergemm", "FRAGMENT")  # the GEMM ops' definitions (kept alive with the module)


# ----------------------------------------------------------------------------------------------
# backend selection
# ----------------------------------------------------------------------------------------------
def ptx_backend_available(device: torch.device) -> bool:
    """True when the inline-PTX kernel can run on this device (Hopper, sm_90, and the host binding)."""
    from . import kernels  # deferred: only CUDA calls need it

    return kernels.available(device)


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = configs.switches().get(_ENV_BACKEND) or "auto"
        if backend not in BACKENDS:
            raise ValueError(f"environment variable {_ENV_BACKEND} must be one of {BACKENDS}, got {backend!r}")
    if device.type != "cuda":
        if backend in ("ptx", "cublas"):
            raise ValueError(f"backend={backend!r} needs CUDA tensors, got tensors on {device}")
        return "reference"
    if backend == "auto":
        return "ptx" if ptx_backend_available(device) else "cublas"
    if backend == "ptx" and not ptx_backend_available(device):
        from . import extension

        why = extension.binding_problem() if torch.cuda.get_device_capability(device) == (9, 0) else None
        raise ValueError(f"backend='ptx' needs an sm_90 (Hopper) GPU and a CUDA toolkit to build it; "
                         f"{device} has compute capability {torch.cuda.get_device_capability(device)}"
                         + (f" ({why})" if why else ""))
    return backend


def resolve_grouped_backend(backend: str, device: torch.device) -> str:
    """Like resolve_backend, but cuBLAS has no block-scaled grouped GEMM: "auto" falls back to the reference."""
    if backend == "cublas":
        raise ValueError("backend='cublas' has no grouped GEMM (torch._scaled_mm has no block-scaled grouped form); "
                         "use 'auto', 'ptx' or 'reference'")
    chosen = resolve_backend(backend, device)
    return "reference" if chosen == "cublas" else chosen


# ----------------------------------------------------------------------------------------------
# the GEMM ops' definitions: CPU and fake kernels here; CUDA in C++ (ptx/binding.cpp) once the binding is loaded
# ----------------------------------------------------------------------------------------------
_native_warned = False


def _native_ready(device: torch.device) -> bool:
    """Load the host binding for a Hopper device (building it once); False where it cannot run or build."""
    global _native_warned
    from . import extension, kernels

    if extension.binding_loaded():
        return True
    if not kernels.available(device):
        return False
    try:
        extension.load_binding()
    except extension.BuildError as exc:
        if not _native_warned:
            warnings.warn(f"deepergemm: {exc}; backend 'auto' uses cuBLAS", RuntimeWarning, stacklevel=3)
            _native_warned = True
        return False
    return True


def _define_gemm_op(schema: str, cpu, python_cuda, fake) -> None:
    """Define deepergemm::<name> (CPU, fake and the stand-in CUDA kernel) and deepergemm::_<name>_python, its
    Python CUDA implementation, which the binding calls for the Python backends."""
    name = schema[:schema.index("(")]
    _lib.define(schema)
    _lib.impl(name, cpu, "CPU")
    torch.library.register_fake(f"deepergemm::{name}", fake, lib=_lib)
    _lib.define(f"_{name}_python" + schema[len(name):])
    _lib.impl(f"_{name}_python", python_cuda, "CUDA")
    _lib.impl(f"_{name}_python", python_cuda, "CPU")  # (tests drive the binding's kernels with CPU tensors)

    def until_binding(*args, **kwargs):
        device = args[0].device
        if device.type != "cuda":
            raise ValueError(f"deepergemm.{name} runs on CPU or CUDA tensors, got tensors on {device}")
        if _native_ready(device) and torch._C._dispatch_has_kernel_for_dispatch_key(f"deepergemm::{name}", "CUDA"):
            return getattr(torch.ops.deepergemm, name).default(*args, **kwargs)  # now the binding's C++ kernel
        return python_cuda(*args, **kwargs)

    _lib.impl(name, until_binding, "CompositeExplicitAutograd")


def _plan(kind: int, device: int, m: int, n: int, k: int, groups: int, rows: int, split_rows: int,
          side_aware: bool) -> list[int]:
    from . import kernels

    return kernels.plan(kind, device, m, n, k, groups, rows, split_rows, side_aware)


def _sm_side_table(device: int) -> torch.Tensor:
    from . import kernels

    return kernels.sm_side_table(device)


# the binding's calls into Python: a problem's first plan, and the L2-side table of a device
_lib.define("_plan(int kind, int device, int m, int n, int k, int groups, int rows, int split_rows, bool side_aware)"
            " -> int[]")
_lib.impl("_plan", _plan, "CompositeExplicitAutograd")
_lib.define("_sm_side_table(int device) -> Tensor")
_lib.impl("_sm_side_table", _sm_side_table, "CompositeExplicitAutograd")


def _run_gemm(backend: str, a, a_scales, b, b_scales, out_dtype, bias) -> torch.Tensor:
    """The Python backends on CUDA tensors (the ptx backend is the binding's)."""
    if backend == "reference":
        return reference.fp8_gemm(a, a_scales, b, b_scales, out_dtype, bias)
    from .cublas import fp8_gemm_cublas

    return fp8_gemm_cublas(a, a_scales, b, b_scales, out_dtype, bias)


# quantize_act, quantize_weight: the reference on CPU, Triton on CUDA
# ----------------------------------------------------------------------------------------------
def _define_op(schema: str, kernels: dict, fake) -> None:
    """Define deepergemm::<name> with a Python kernel per dispatch key and a fake kernel (torch.library.Library, not
    custom_op: its Python autograd wrapper costs ~10 us a call; these ops have no backward either way)."""
    name = schema[:schema.index("(")]
    _lib.define(schema)
    for key, kernel in kernels.items():
        _lib.impl(name, kernel, key)
    torch.library.register_fake(f"deepergemm::{name}", fake, lib=_lib)


def _quantize_act_cpu(x: torch.Tensor, ue8m0: bool = False, group_k: int = GROUP_K) -> tuple[torch.Tensor, torch.Tensor]:
    layouts.check_quantize_input("x", x, group_k)
    q, s = reference.quantize_act(x, ue8m0=ue8m0, group_k=group_k)
    scales = layouts.empty_act_scales(x.shape[0], x.shape[1], x.device, group_k)
    scales.copy_(s)
    return q, scales


def _quantize_act_cuda(x: torch.Tensor, ue8m0: bool = False, group_k: int = GROUP_K) -> tuple[torch.Tensor, torch.Tensor]:
    from .triton_kernels import quantize as triton_quantize  # (its launcher checks x: once per call)

    return triton_quantize.quantize_act(x, ue8m0=ue8m0, group_k=group_k)


def _quantize_act_fake(x: torch.Tensor, ue8m0: bool = False, group_k: int = GROUP_K) -> tuple[torch.Tensor, torch.Tensor]:
    layouts.check_quantize_input("x", x, group_k)
    m, k = x.shape
    return x.new_empty((m, k), dtype=reference.FP8_DTYPE), layouts.empty_act_scales(m, k, x.device, group_k)


_define_op("quantize_act(Tensor x, bool ue8m0=False, int group_k=128) -> (Tensor, Tensor)",
           {"CPU": _quantize_act_cpu, "CUDA": _quantize_act_cuda}, _quantize_act_fake)


def _quantize_weight_cpu(w: torch.Tensor, ue8m0: bool = False, block_k: int = GROUP_K) -> tuple[torch.Tensor, torch.Tensor]:
    layouts.check_quantize_input("w", w, block_k)
    return reference.quantize_weight(w, ue8m0=ue8m0, block_k=block_k)


def _quantize_weight_cuda(w: torch.Tensor, ue8m0: bool = False, block_k: int = GROUP_K) -> tuple[torch.Tensor, torch.Tensor]:
    layouts.check_quantize_input("w", w, block_k)
    from .triton_kernels import quantize as triton_quantize

    return triton_quantize.quantize_weight(w, ue8m0=ue8m0, block_k=block_k)


def _quantize_weight_fake(w: torch.Tensor, ue8m0: bool = False, block_k: int = GROUP_K) -> tuple[torch.Tensor, torch.Tensor]:
    layouts.check_quantize_input("w", w, block_k)
    n, k = w.shape
    scales = w.new_empty((ceil_div(n, GROUP_K), k // block_k), dtype=torch.float32)
    return w.new_empty((n, k), dtype=reference.FP8_DTYPE), scales


_define_op("quantize_weight(Tensor w, bool ue8m0=False, int block_k=128) -> (Tensor, Tensor)",
           {"CPU": _quantize_weight_cpu, "CUDA": _quantize_weight_cuda}, _quantize_weight_fake)


# ----------------------------------------------------------------------------------------------
# fp8_gemm
# ----------------------------------------------------------------------------------------------
def _fp8_gemm_cpu(a, a_scales, b, b_scales, out_dtype=torch.bfloat16, bias=None, backend="auto"):
    layouts.check_gemm_inputs(a, a_scales, b, b_scales, out_dtype, bias, recipe_256_ok=True)
    resolve_backend(backend, a.device)  # validates the name; CPU always runs the reference
    return reference.fp8_gemm(a, a_scales, b, b_scales, out_dtype, bias)


def _fp8_gemm_python(a, a_scales, b, b_scales, out_dtype=torch.bfloat16, bias=None, backend="auto"):
    m, n, k = layouts.check_gemm_inputs(a, a_scales, b, b_scales, out_dtype, bias, recipe_256_ok=True)
    chosen = resolve_backend(backend, a.device)
    if m == 0:
        return a.new_empty((m, n), dtype=out_dtype)
    if chosen == "ptx":  # (the binding loaded meanwhile)
        return torch.ops.deepergemm.fp8_gemm.default(a, a_scales, b, b_scales, out_dtype, bias, chosen)
    if chosen == "cublas" and layouts.scale_group_k(a_scales, k) != layouts.GROUP_K:
        # cuBLAS's blockwise recipe is per 128: the 256 recipe's scales repeated per 128 give the same product
        a_scales, b_scales = a_scales.repeat_interleave(2, dim=1), b_scales.repeat_interleave(2, dim=1)
    return _run_gemm(chosen, a, a_scales, b, b_scales, out_dtype, bias)


def _fp8_gemm_fake(a, a_scales, b, b_scales, out_dtype=torch.bfloat16, bias=None, backend="auto"):
    m, n, _ = layouts.check_gemm_inputs(a, a_scales, b, b_scales, out_dtype, bias, recipe_256_ok=True)
    return a.new_empty((m, n), dtype=out_dtype)


_define_gemm_op("fp8_gemm(Tensor a, Tensor a_scales, Tensor b, Tensor b_scales, ScalarType out_dtype=bfloat16, "
                "Tensor? bias=None, str backend='auto') -> Tensor", _fp8_gemm_cpu, _fp8_gemm_python, _fp8_gemm_fake)


# ----------------------------------------------------------------------------------------------
# fp8_gemm_fp8_out: the output rounded to bf16, then quantized per 1x128 group exactly as quantize_act quantizes it
# (ptx: in the GEMM's epilogue; the other backends: the bf16 GEMM, then quantize_act)
# ----------------------------------------------------------------------------------------------
def _fp8_gemm_fp8_out_cpu(a, a_scales, b, b_scales, bias=None, ue8m0=False, backend="auto"):
    layouts.check_gemm_fp8_out_inputs(a, a_scales, b, b_scales, bias)
    resolve_backend(backend, a.device)  # validates the name; CPU always runs the reference
    return _quantize_act_cpu(reference.fp8_gemm(a, a_scales, b, b_scales, torch.bfloat16, bias), ue8m0)


def _fp8_gemm_fp8_out_python(a, a_scales, b, b_scales, bias=None, ue8m0=False, backend="auto"):
    m, n, _ = layouts.check_gemm_fp8_out_inputs(a, a_scales, b, b_scales, bias)
    chosen = resolve_backend(backend, a.device)
    if m == 0:
        return a.new_empty((m, n), dtype=reference.FP8_DTYPE), layouts.empty_act_scales(m, n, a.device)
    if chosen == "ptx":  # (the binding loaded meanwhile)
        return torch.ops.deepergemm.fp8_gemm_fp8_out.default(a, a_scales, b, b_scales, bias, ue8m0, chosen)
    out = _run_gemm(chosen, a, a_scales, b, b_scales, torch.bfloat16, bias)
    return torch.ops.deepergemm.quantize_act(out, ue8m0)


def _fp8_gemm_fp8_out_fake(a, a_scales, b, b_scales, bias=None, ue8m0=False, backend="auto"):
    m, n, _ = layouts.check_gemm_fp8_out_inputs(a, a_scales, b, b_scales, bias)
    return a.new_empty((m, n), dtype=reference.FP8_DTYPE), layouts.empty_act_scales(m, n, a.device)


_define_gemm_op("fp8_gemm_fp8_out(Tensor a, Tensor a_scales, Tensor b, Tensor b_scales, Tensor? bias=None, "
                "bool ue8m0=False, str backend='auto') -> (Tensor, Tensor)",
                _fp8_gemm_fp8_out_cpu, _fp8_gemm_fp8_out_python, _fp8_gemm_fp8_out_fake)


# ----------------------------------------------------------------------------------------------
# swiglu: SwiGLU of an interleaved gate/up bf16 output (the reference on CPU, Triton on CUDA)
# ----------------------------------------------------------------------------------------------
def _swiglu_cpu(gate_up: torch.Tensor) -> torch.Tensor:
    layouts.check_swiglu_input(gate_up)
    return reference.swiglu(gate_up)


def _swiglu_cuda(gate_up: torch.Tensor) -> torch.Tensor:
    from .triton_kernels import swiglu as triton_swiglu

    return triton_swiglu.swiglu(gate_up)


def _swiglu_fake(gate_up: torch.Tensor) -> torch.Tensor:
    layouts.check_swiglu_input(gate_up)
    return gate_up.new_empty((gate_up.shape[0], gate_up.shape[1] // 2))


_define_op("swiglu(Tensor gate_up) -> Tensor", {"CPU": _swiglu_cpu, "CUDA": _swiglu_cuda}, _swiglu_fake)


# ----------------------------------------------------------------------------------------------
# fp8_gemm_swiglu: quantize_act(swiglu(the bf16 GEMM)) of a gate/up weight interleaved per 128 rows (ptx: one kernel,
# SwiGLU and the quantization in the epilogue; the other backends: the three steps)
# ----------------------------------------------------------------------------------------------
def _fp8_gemm_swiglu_cpu(a, a_scales, b, b_scales, ue8m0=False, backend="auto"):
    layouts.check_gemm_swiglu_inputs(a, a_scales, b, b_scales)
    resolve_backend(backend, a.device)  # validates the name; CPU always runs the reference
    gate_up = reference.fp8_gemm(a, a_scales, b, b_scales, torch.bfloat16)
    return _quantize_act_cpu(reference.swiglu(gate_up), ue8m0)


def _fp8_gemm_swiglu_python(a, a_scales, b, b_scales, ue8m0=False, backend="auto"):
    m, n, _ = layouts.check_gemm_swiglu_inputs(a, a_scales, b, b_scales)
    chosen = resolve_backend(backend, a.device)
    if m == 0:
        return a.new_empty((m, n // 2), dtype=reference.FP8_DTYPE), layouts.empty_act_scales(m, n // 2, a.device)
    if chosen == "ptx":  # (the binding loaded meanwhile)
        return torch.ops.deepergemm.fp8_gemm_swiglu.default(a, a_scales, b, b_scales, ue8m0, chosen)
    gate_up = _run_gemm(chosen, a, a_scales, b, b_scales, torch.bfloat16, None)
    return torch.ops.deepergemm.quantize_act(torch.ops.deepergemm.swiglu(gate_up), ue8m0)


def _fp8_gemm_swiglu_fake(a, a_scales, b, b_scales, ue8m0=False, backend="auto"):
    m, n, _ = layouts.check_gemm_swiglu_inputs(a, a_scales, b, b_scales)
    return a.new_empty((m, n // 2), dtype=reference.FP8_DTYPE), layouts.empty_act_scales(m, n // 2, a.device)


_define_gemm_op("fp8_gemm_swiglu(Tensor a, Tensor a_scales, Tensor b, Tensor b_scales, bool ue8m0=False, "
                "str backend='auto') -> (Tensor, Tensor)",
                _fp8_gemm_swiglu_cpu, _fp8_gemm_swiglu_python, _fp8_gemm_swiglu_fake)


# ----------------------------------------------------------------------------------------------
# fp8_gemm with an L2-placed B (deepergemm/l2_placement.py: prepare_weight)
# ----------------------------------------------------------------------------------------------
def _placed_b(pool, slots, n, k, slab_rows) -> torch.Tensor:
    from . import l2_placement

    return l2_placement.unpack(pool, slots, n, k, slab_rows)


def _fp8_gemm_placed_cpu(a, a_scales, pool, slots, b_scales, n, slab_rows, split_rows, out_dtype=torch.bfloat16,
                         bias=None, sm_side=None, side_aware=True, backend="auto"):
    m, k = layouts.check_placed_inputs(a, a_scales, pool, slots, b_scales, n, slab_rows, split_rows, out_dtype, bias,
                                       sm_side)
    resolve_backend(backend, a.device)
    return reference.fp8_gemm(a, a_scales, _placed_b(pool, slots, n, k, slab_rows), b_scales, out_dtype, bias)


def _fp8_gemm_placed_python(a, a_scales, pool, slots, b_scales, n, slab_rows, split_rows, out_dtype=torch.bfloat16,
                            bias=None, sm_side=None, side_aware=True, backend="auto"):
    m, k = layouts.check_placed_inputs(a, a_scales, pool, slots, b_scales, n, slab_rows, split_rows, out_dtype, bias,
                                       sm_side)
    chosen = resolve_backend(backend, a.device)
    if m == 0:
        return a.new_empty((m, n), dtype=out_dtype)
    if chosen == "ptx":  # (the binding loaded meanwhile)
        return torch.ops.deepergemm.fp8_gemm_placed.default(a, a_scales, pool, slots, b_scales, n, slab_rows,
                                                            split_rows, out_dtype, bias, sm_side, side_aware, chosen)
    # cuBLAS and the reference read a plain B: gather it (slow, for checks)
    return _run_gemm(chosen, a, a_scales, _placed_b(pool, slots, n, k, slab_rows), b_scales, out_dtype, bias)


def _fp8_gemm_placed_fake(a, a_scales, pool, slots, b_scales, n, slab_rows, split_rows, out_dtype=torch.bfloat16,
                          bias=None, sm_side=None, side_aware=True, backend="auto"):
    m, _ = layouts.check_placed_inputs(a, a_scales, pool, slots, b_scales, n, slab_rows, split_rows, out_dtype, bias,
                                       sm_side)
    return a.new_empty((m, n), dtype=out_dtype)


_define_gemm_op("fp8_gemm_placed(Tensor a, Tensor a_scales, Tensor pool, Tensor slots, Tensor b_scales, int n, "
                "int slab_rows, int split_rows, ScalarType out_dtype=bfloat16, Tensor? bias=None, "
                "Tensor? sm_side=None, bool side_aware=True, str backend='auto') -> Tensor",
                _fp8_gemm_placed_cpu, _fp8_gemm_placed_python, _fp8_gemm_placed_fake)


# ----------------------------------------------------------------------------------------------
# linear: quantize the activation and multiply, in one call
# ----------------------------------------------------------------------------------------------
def _linear_2d(x2: torch.Tensor, w, w_scales, bias, backend: str) -> torch.Tensor:
    q, s = torch.ops.deepergemm.quantize_act(x2, False, layouts.linear_group_k(w_scales, x2.shape[1]))
    out = torch.ops.deepergemm.fp8_gemm(q, s, w, w_scales, layouts.linear_gemm_dtype(x2.dtype), bias, backend)
    return out if out.dtype == x2.dtype else out.to(x2.dtype)


def _linear(x: torch.Tensor, w: torch.Tensor, w_scales: torch.Tensor, bias: torch.Tensor | None = None,
            backend: str = "auto") -> torch.Tensor:
    layouts.check_linear_inputs(x, w, w_scales, bias)
    x2 = x.reshape(-1, x.shape[-1])
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    out = _linear_2d(x2, w, w_scales, bias, backend)
    return out.reshape(*x.shape[:-1], w.shape[0])


def _linear_fake(x, w, w_scales, bias=None, backend="auto"):
    layouts.check_linear_inputs(x, w, w_scales, bias)
    rows = 1
    for d in x.shape[:-1]:
        rows = rows * d
    layouts.check_gemm_inputs(
        x.new_empty((rows, x.shape[-1]), dtype=reference.FP8_DTYPE),
        layouts.empty_act_scales(rows, x.shape[-1], x.device, layouts.linear_group_k(w_scales, x.shape[-1])), w,
        w_scales, layouts.linear_gemm_dtype(x.dtype), bias, recipe_256_ok=True)
    return x.new_empty((*x.shape[:-1], w.shape[0]))


_define_op("linear(Tensor x, Tensor w, Tensor w_scales, Tensor? bias=None, str backend='auto') -> Tensor",
           {"CPU": _linear, "CUDA": _linear}, _linear_fake)


# ----------------------------------------------------------------------------------------------
# grouped (MoE) GEMMs: write into `out`, only the groups' real rows (mutating ops: "untouched" is observable)
# ----------------------------------------------------------------------------------------------
def _grouped_contiguous_cpu(a, a_scales, b, b_scales, group_sizes, out, zero_padding=False, backend="auto") -> None:
    layouts.check_grouped_contiguous_inputs(a, a_scales, b, b_scales, group_sizes, out)
    resolve_grouped_backend(backend, a.device)  # validates the name; CPU always runs the reference
    if zero_padding:
        out.zero_()
    reference.m_grouped_fp8_gemm_contiguous(a, a_scales, b, b_scales, group_sizes, out, layouts.GROUPED_M_ALIGNMENT)


def _grouped_contiguous_python(a, a_scales, b, b_scales, group_sizes, out, zero_padding=False,
                               backend="auto") -> None:
    m, _, _, _ = layouts.check_grouped_contiguous_inputs(a, a_scales, b, b_scales, group_sizes, out)
    chosen = resolve_grouped_backend(backend, a.device)
    if chosen == "ptx":  # (the binding loaded meanwhile)
        torch.ops.deepergemm.m_grouped_fp8_gemm_contiguous.default(a, a_scales, b, b_scales, group_sizes, out,
                                                                   zero_padding, chosen)
        return
    if zero_padding:
        out.zero_()
    if m:
        reference.m_grouped_fp8_gemm_contiguous(a, a_scales, b, b_scales, group_sizes, out,
                                                layouts.GROUPED_M_ALIGNMENT)


def _grouped_contiguous_fake(a, a_scales, b, b_scales, group_sizes, out, zero_padding=False, backend="auto") -> None:
    layouts.check_grouped_contiguous_inputs(a, a_scales, b, b_scales, group_sizes, out)


_define_gemm_op("m_grouped_fp8_gemm_contiguous(Tensor a, Tensor a_scales, Tensor b, Tensor b_scales, "
                "Tensor group_sizes, Tensor(a!) out, bool zero_padding=False, str backend='auto') -> ()",
                _grouped_contiguous_cpu, _grouped_contiguous_python, _grouped_contiguous_fake)


def _grouped_masked_cpu(a, a_scales, b, b_scales, masked_m, expected_m, out, backend="auto") -> None:
    layouts.check_grouped_masked_inputs(a, a_scales, b, b_scales, masked_m, expected_m, out)
    resolve_grouped_backend(backend, a.device)
    reference.m_grouped_fp8_gemm_masked(a, a_scales, b, b_scales, masked_m, out)


def _grouped_masked_python(a, a_scales, b, b_scales, masked_m, expected_m, out, backend="auto") -> None:
    _, max_m, _, _ = layouts.check_grouped_masked_inputs(a, a_scales, b, b_scales, masked_m, expected_m, out)
    chosen = resolve_grouped_backend(backend, a.device)
    if chosen == "ptx":  # (the binding loaded meanwhile)
        torch.ops.deepergemm.m_grouped_fp8_gemm_masked.default(a, a_scales, b, b_scales, masked_m, expected_m, out,
                                                               chosen)
        return
    if max_m:
        reference.m_grouped_fp8_gemm_masked(a, a_scales, b, b_scales, masked_m, out)


def _grouped_masked_fake(a, a_scales, b, b_scales, masked_m, expected_m, out, backend="auto") -> None:
    layouts.check_grouped_masked_inputs(a, a_scales, b, b_scales, masked_m, expected_m, out)


_define_gemm_op("m_grouped_fp8_gemm_masked(Tensor a, Tensor a_scales, Tensor b, Tensor b_scales, Tensor masked_m, "
                "int expected_m, Tensor(a!) out, str backend='auto') -> ()",
                _grouped_masked_cpu, _grouped_masked_python, _grouped_masked_fake)


# ----------------------------------------------------------------------------------------------
# m_grouped_fp8_gemm_contiguous_swiglu, m_grouped_fp8_gemm_masked_swiglu: quantize_act(swiglu(the grouped bf16
# GEMM)) of stacked experts' gate/up weights in halves (ptx: one kernel; the reference: the steps). Rows outside the
# groups' real rows of the outputs are unspecified (the kernel never writes them; the steps here quantize zeros).
# ----------------------------------------------------------------------------------------------
def _swiglu_of_halves(gate_up, ue8m0, quantize, swiglu):
    """quantize_act(swiglu(...)) of a grouped bf16 GEMM's (rows, 2I) output, gate and up columns in halves."""
    return quantize(swiglu(layouts.interleave_halves(gate_up)), ue8m0)


def _grouped_swiglu_steps(a, a_scales, b, b_scales, group_sizes, ue8m0, quantize, swiglu):
    m, n = a.shape[0], b.shape[1]
    gate_up = torch.zeros((m, n), dtype=torch.bfloat16, device=a.device)
    reference.m_grouped_fp8_gemm_contiguous(a, a_scales, b, b_scales, group_sizes, gate_up,
                                            layouts.GROUPED_M_ALIGNMENT)
    return _swiglu_of_halves(gate_up, ue8m0, quantize, swiglu)


def _masked_swiglu_steps(a, a_scales, b, b_scales, masked_m, ue8m0, quantize, swiglu):
    groups, max_m, _ = a.shape
    n = b.shape[1]
    gate_up = torch.zeros((groups, max_m, n), dtype=torch.bfloat16, device=a.device)
    reference.m_grouped_fp8_gemm_masked(a, a_scales, b, b_scales, masked_m, gate_up)
    q, s = _swiglu_of_halves(gate_up.view(groups * max_m, n), ue8m0, quantize, swiglu)
    return q.view(groups, max_m, n // 2), s.view(groups, max_m, n // (2 * GROUP_K))


def _grouped_swiglu_cpu(a, a_scales, b, b_scales, group_sizes, expected_m=0, ue8m0=False, backend="auto"):
    layouts.check_grouped_swiglu_inputs(a, a_scales, b, b_scales, group_sizes, expected_m)
    resolve_grouped_backend(backend, a.device)  # validates the name; CPU always runs the reference
    return _grouped_swiglu_steps(a, a_scales, b, b_scales, group_sizes, ue8m0, _quantize_act_cpu, reference.swiglu)


def _grouped_swiglu_python(a, a_scales, b, b_scales, group_sizes, expected_m=0, ue8m0=False, backend="auto"):
    m, n, _, _ = layouts.check_grouped_swiglu_inputs(a, a_scales, b, b_scales, group_sizes, expected_m)
    chosen = resolve_grouped_backend(backend, a.device)
    if chosen == "ptx":  # (the binding loaded meanwhile)
        return torch.ops.deepergemm.m_grouped_fp8_gemm_contiguous_swiglu.default(a, a_scales, b, b_scales,
                                                                                 group_sizes, expected_m, ue8m0, chosen)
    if m == 0:
        return _grouped_swiglu_fake(a, a_scales, b, b_scales, group_sizes, expected_m, ue8m0, backend)
    return _grouped_swiglu_steps(a, a_scales, b, b_scales, group_sizes, ue8m0, torch.ops.deepergemm.quantize_act,
                                 torch.ops.deepergemm.swiglu)


def _grouped_swiglu_fake(a, a_scales, b, b_scales, group_sizes, expected_m=0, ue8m0=False, backend="auto"):
    m, n, _, _ = layouts.check_grouped_swiglu_inputs(a, a_scales, b, b_scales, group_sizes, expected_m)
    return a.new_empty((m, n // 2), dtype=reference.FP8_DTYPE), layouts.empty_act_scales(m, n // 2, a.device)


_define_gemm_op("m_grouped_fp8_gemm_contiguous_swiglu(Tensor a, Tensor a_scales, Tensor b, Tensor b_scales, "
                "Tensor group_sizes, int expected_m=0, bool ue8m0=False, str backend='auto') -> (Tensor, Tensor)",
                _grouped_swiglu_cpu, _grouped_swiglu_python, _grouped_swiglu_fake)


def _masked_swiglu_cpu(a, a_scales, b, b_scales, masked_m, expected_m, ue8m0=False, backend="auto"):
    layouts.check_grouped_masked_swiglu_inputs(a, a_scales, b, b_scales, masked_m, expected_m)
    resolve_grouped_backend(backend, a.device)
    return _masked_swiglu_steps(a, a_scales, b, b_scales, masked_m, ue8m0, _quantize_act_cpu, reference.swiglu)


def _masked_swiglu_python(a, a_scales, b, b_scales, masked_m, expected_m, ue8m0=False, backend="auto"):
    _, max_m, _, _ = layouts.check_grouped_masked_swiglu_inputs(a, a_scales, b, b_scales, masked_m, expected_m)
    chosen = resolve_grouped_backend(backend, a.device)
    if chosen == "ptx":  # (the binding loaded meanwhile)
        return torch.ops.deepergemm.m_grouped_fp8_gemm_masked_swiglu.default(a, a_scales, b, b_scales, masked_m,
                                                                             expected_m, ue8m0, chosen)
    if max_m == 0:
        return _masked_swiglu_fake(a, a_scales, b, b_scales, masked_m, expected_m, ue8m0, backend)
    return _masked_swiglu_steps(a, a_scales, b, b_scales, masked_m, ue8m0, torch.ops.deepergemm.quantize_act,
                                torch.ops.deepergemm.swiglu)


def _masked_swiglu_fake(a, a_scales, b, b_scales, masked_m, expected_m, ue8m0=False, backend="auto"):
    groups, max_m, n, _ = layouts.check_grouped_masked_swiglu_inputs(a, a_scales, b, b_scales, masked_m, expected_m)
    scales = layouts.empty_act_scales(groups * max_m, n // 2, a.device).view(groups, max_m, n // (2 * GROUP_K))
    return a.new_empty((groups, max_m, n // 2), dtype=reference.FP8_DTYPE), scales


_define_gemm_op("m_grouped_fp8_gemm_masked_swiglu(Tensor a, Tensor a_scales, Tensor b, Tensor b_scales, "
                "Tensor masked_m, int expected_m, bool ue8m0=False, str backend='auto') -> (Tensor, Tensor)",
                _masked_swiglu_cpu, _masked_swiglu_python, _masked_swiglu_fake)


# ----------------------------------------------------------------------------------------------
# MoE token layout (deepergemm/moe.py): router output -> the contiguous grouped rows, and back
# ----------------------------------------------------------------------------------------------
@custom_op("deepergemm::moe_contiguous_layout", mutates_args=(), device_types=("cpu", "cuda"))
def moe_contiguous_layout(topk_ids: torch.Tensor, num_experts: int, alignment: int,
                          max_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row_of (T, topk), token_of (max_rows,), group_sizes (E,), group_starts (E,)), all int32."""
    from . import moe

    return moe.place(topk_ids, num_experts, alignment, max_rows)


@moe_contiguous_layout.register_fake
def _moe_contiguous_layout_fake(topk_ids, num_experts, alignment, max_rows):
    def make(*shape):
        return topk_ids.new_empty(shape, dtype=torch.int32)

    return make(*topk_ids.shape), make(max_rows), make(num_experts), make(num_experts)


@custom_op("deepergemm::moe_permute", mutates_args=(), device_types=("cpu", "cuda"))
def moe_permute(x: torch.Tensor, token_of: torch.Tensor) -> torch.Tensor:
    from . import moe

    return moe.permute(x, token_of)


@moe_permute.register_fake
def _moe_permute_fake(x, token_of):
    return x.new_empty((token_of.shape[0], x.shape[1]))


@custom_op("deepergemm::moe_unpermute", mutates_args=(), device_types=("cpu", "cuda"))
def moe_unpermute(y_perm: torch.Tensor, row_of: torch.Tensor, topk_weights: torch.Tensor | None) -> torch.Tensor:
    from . import moe

    return moe.unpermute(y_perm, row_of, topk_weights)


@moe_unpermute.register_fake
def _moe_unpermute_fake(y_perm, row_of, topk_weights):
    return y_perm.new_empty((row_of.shape[0], y_perm.shape[1]))
