"""PyTorch modules over deepergemm's FP8 GEMMs, with the parameter names and shapes that vLLM, SGLang and
Hugging Face transformers give DeepSeek-style block-FP8 weights.

    import deepergemm.nn as dnn
    layer = dnn.FP8Linear.from_linear(linear)           # weight (N, K) e4m3 + weight_scale_inv (N/128, K/128) fp32
    skipped = dnn.convert(model, skip=["lm_head"])      # every eligible nn.Linear -> FP8Linear; [(name, reason)]
    moe = dnn.FP8MoE(7168, 2048, num_experts=256, top_k=8, shared_intermediate_size=2048, scoring="sigmoid",
                     n_group=8, topk_group=4, routed_scaling_factor=2.5)   # DeepSeek-V3's MoE block
    y = moe(x)                                           # router, token layout, grouped GEMMs, weighted combine
    report = dnn.load_fp8_checkpoint(model, "path/to/DeepSeek-V3")     # safetensors shards (deepergemm.checkpoint)

Every module is inference only (the GEMMs have no backward): its FP8 tensors are Parameters with
requires_grad=False, and a forward with an input that requires grad in grad mode raises NotImplementedError.
CPU tensors run the pure-torch reference (the same results as the GPU kernels up to fp32 summation order), and
every forward has static shapes and no host synchronization, so modules run inside torch.compile(fullgraph=True)
and CUDA graphs (the MoE block included: new routing on every replay).
"""
from __future__ import annotations

import fnmatch

import torch
import torch.nn.functional as F
from torch import nn

import deepergemm as dg

from .layouts import MAX_GROUPS, N_ALIGN, ceil_div, interleave_gate_up
from .reference import FP8_DTYPE, GROUP_K

__all__ = ["BLOCK_SIZE", "FP8Linear", "FP8MLP", "TopKRouter", "FP8Experts", "FP8MoE", "convert",
           "linear_shape_problem", "load_fp8_checkpoint"]

BLOCK_SIZE = (GROUP_K, GROUP_K)  # the weight block (N, K) every module takes: 1x128 activations, 128x128 weights
_FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
SCORINGS = ("softmax", "sigmoid")


# ----------------------------------------------------------------------------------------------
# rules shared by the modules
# ----------------------------------------------------------------------------------------------
def _check_block_size(block_size) -> None:
    """transformers passes None or a list; both mean 128x128 when they say it."""
    if block_size is None:
        return
    if not isinstance(block_size, (tuple, list)) or [int(b) for b in block_size] != list(BLOCK_SIZE):
        raise ValueError(f"block_size must be (128, 128): deepergemm quantizes weights in 128x128 blocks and "
                         f"activations in 1x128 groups, got {block_size!r}")


def _check_count(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_backend(backend, grouped: bool = False) -> None:
    allowed = tuple(b for b in dg.BACKENDS if not (grouped and b == "cublas"))
    if not isinstance(backend, str) or backend not in allowed:
        raise ValueError(f"backend must be one of {allowed}, got {backend!r}")


def _check_float_dtype(name: str, dtype) -> None:
    if dtype is not None and dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be torch.bfloat16, torch.float16 or torch.float32 (or None), got {dtype!r}")


def linear_shape_problem(in_features: int, out_features: int) -> str | None:
    """Why an (in_features -> out_features) layer cannot be an FP8Linear (the GEMM's rules: K a positive multiple
    of 128, N a positive multiple of 8), or None when it can."""
    problems = []
    if in_features <= 0 or in_features % GROUP_K:
        problems.append(f"in_features (K) must be a positive multiple of {GROUP_K}, got {in_features}")
    if out_features <= 0 or out_features % N_ALIGN:
        problems.append(f"out_features (N) must be a positive multiple of {N_ALIGN}, got {out_features}")
    return "; ".join(problems) or None


def _fp8_param(shape, device) -> nn.Parameter:
    # zeros, not empty: a forward before the weights are loaded gives zeros rather than garbage
    return nn.Parameter(torch.zeros(shape, dtype=FP8_DTYPE, device=device), requires_grad=False)


def _scale_param(shape, device) -> nn.Parameter:
    return nn.Parameter(torch.ones(shape, dtype=torch.float32, device=device), requires_grad=False)


def weight_scale_shape(n: int, k: int) -> tuple[int, int]:
    """The (ceil(N/128), ceil(K/128)) scale grid of an (N, K) weight in 128x128 blocks."""
    return ceil_div(n, GROUP_K), ceil_div(k, GROUP_K)


def check_fp8_pair(weight_name: str, weight: torch.Tensor, scale_name: str, scale: torch.Tensor | None,
                   weight_shape: tuple[int, ...]) -> None:
    """A stored block-FP8 weight about to be loaded: e4m3 with the module's shape, its scales fp32 on the 128x128
    grid. Raises TypeError (dtype) or ValueError (shape, block size) naming the tensor."""
    if weight is not None:
        if weight.dtype != FP8_DTYPE:
            raise TypeError(f"{weight_name} must be float8_e4m3fn (a block-FP8 weight), got {weight.dtype}: "
                            "deepergemm takes e4m3 weights with fp32 128x128 block scales (weight_scale_inv)")
        if tuple(weight.shape) != tuple(weight_shape):
            raise ValueError(f"{weight_name} must have shape {tuple(weight_shape)}, got {tuple(weight.shape)}")
    if scale is not None:
        want = (*weight_shape[:-2], *weight_scale_shape(*weight_shape[-2:]))
        if scale.dtype != torch.float32:
            raise TypeError(f"{scale_name} must be float32 (the dequantization scale of each 128x128 block), got "
                            f"{scale.dtype}")
        if tuple(scale.shape) != want:
            n, k = weight_shape[-2:]
            raise ValueError(f"{scale_name} must have shape {want} (128x128 blocks of a {n}x{k} weight), got "
                             f"{tuple(scale.shape)}: a checkpoint quantized with another block size is not supported")


# ----------------------------------------------------------------------------------------------
# FP8Linear
# ----------------------------------------------------------------------------------------------
class FP8Linear(nn.Module):
    """y = x @ dequant(weight).T + bias, x quantized per 1x128 group on the fly; y has x's dtype.

    Parameters (requires_grad=False): ``weight`` (out_features, in_features) float8_e4m3fn, ``weight_scale_inv``
    (ceil(out/128), in/128) fp32 (the factor each 128x128 block is multiplied by: the name vLLM, SGLang and
    transformers use), ``bias`` (out_features,) in ``dtype`` (default: torch's default dtype), added after the
    GEMM in fp32. A new layer holds zero weights until from_linear, load_state_dict or load_fp8_checkpoint fills
    it. in_features must be a positive multiple of 128 and out_features of 8; block_size (128, 128) (None means
    it too); activation_scheme "dynamic" (the only one). backend: see deepergemm.fp8_gemm ("auto" by default)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, block_size=BLOCK_SIZE,
                 device=None, dtype=None, *, activation_scheme: str = "dynamic", backend: str = "auto"):
        super().__init__()
        _check_count("in_features", in_features)
        _check_count("out_features", out_features)
        problem = linear_shape_problem(in_features, out_features)
        if problem:
            raise ValueError(f"FP8Linear({in_features}, {out_features}): {problem}")
        _check_block_size(block_size)
        if activation_scheme != "dynamic":
            raise ValueError(f"activation_scheme must be 'dynamic' (activations are quantized per 1x128 group on the "
                             f"fly), got {activation_scheme!r}")
        _check_float_dtype("dtype", dtype)
        _check_backend(backend)
        self.in_features, self.out_features = in_features, out_features
        self.block_size = BLOCK_SIZE
        self.backend = backend
        self.weight = _fp8_param((out_features, in_features), device)
        self.weight_scale_inv = _scale_param(weight_scale_shape(out_features, in_features), device)
        if bias:
            dtype = dtype or torch.get_default_dtype()
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, backend: str = "auto") -> "FP8Linear":
        """An FP8Linear holding linear's weight quantized in 128x128 blocks (dg.quantize_weight) and its bias as
        it is, on linear's device (a meta-device layer gives a meta-device FP8Linear)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        weight = linear.weight.detach()
        if weight.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"linear.weight must be bfloat16, float16 or float32 to be quantized, got {weight.dtype}")
        bias = None if linear.bias is None else linear.bias.detach()
        layer = cls(linear.in_features, linear.out_features, bias is not None, device="meta",
                    dtype=None if bias is None else bias.dtype, backend=backend)
        with torch.no_grad():
            q, s = dg.quantize_weight(weight)
        layer.weight = nn.Parameter(q, requires_grad=False)
        layer.weight_scale_inv = nn.Parameter(s, requires_grad=False)
        if bias is not None:
            layer.bias = nn.Parameter(bias.clone(), requires_grad=False)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dg.linear(x, self.weight, self.weight_scale_inv, self.bias, backend=self.backend)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # load_state_dict would cast a bf16 weight into the fp8 parameter without a word: refuse it here
        check_fp8_pair(prefix + "weight", state_dict.get(prefix + "weight"), prefix + "weight_scale_inv",
                       state_dict.get(prefix + "weight_scale_inv"), (self.out_features, self.in_features))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"block_size={self.block_size}, backend={self.backend!r}")


# ----------------------------------------------------------------------------------------------
# convert
# ----------------------------------------------------------------------------------------------
def _skipped_by(name: str, skip) -> bool:
    return any(name == pattern or fnmatch.fnmatchcase(name, pattern) for pattern in skip)


def _shared_weights(model: nn.Module) -> dict[int, list[str]]:
    """id(parameter) -> every module name holding it (tied weights share one Parameter)."""
    holders: dict[int, list[str]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for param in module.parameters(recurse=False):
            holders.setdefault(id(param), []).append(module_name)
    return holders


def convert(model: nn.Module, skip=(), *, quantize: bool = True, backend: str = "auto") -> list[tuple[str, str]]:
    """Replace, in place, every nn.Linear of model that an FP8Linear can stand for; return the layers left as
    they were, as [(qualified name, reason)].

    Left alone: names in ``skip`` (exact qualified names or fnmatch patterns, e.g. "lm_head", "*.gate"), layers
    whose shape breaks the GEMM's rules (in_features % 128, out_features % 8), weights that are not bf16, fp16 or
    fp32, weights tied to another module (quantizing one copy would untie them), and subclasses of nn.Linear (their
    forward may differ: nn.MultiheadAttention reads its out_proj's weight itself). quantize=True quantizes each
    weight (FP8Linear.from_linear); quantize=False puts zero FP8 layers of the same shape on the same device (meta
    included) for a checkpoint to fill (load_fp8_checkpoint)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(skip, str):
        skip = (skip,)
    skip = tuple(skip)
    if not all(isinstance(s, str) for s in skip):
        raise TypeError(f"skip must be names or fnmatch patterns (str), got {skip!r}")
    if not isinstance(quantize, bool):
        raise TypeError(f"quantize must be a bool, got {quantize!r}")
    _check_backend(backend)
    if type(model) is nn.Linear:
        return [("", "the model itself is an nn.Linear: use FP8Linear.from_linear(model)")]
    holders = _shared_weights(model)
    report: list[tuple[str, str]] = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            reason = _convert_problem(name, child, skip, holders)
            if reason:
                report.append((name, reason))
                continue
            if quantize:
                new = FP8Linear.from_linear(child, backend=backend)
            else:
                bias = child.bias
                new = FP8Linear(child.in_features, child.out_features, bias is not None, device=child.weight.device,
                                dtype=None if bias is None else bias.dtype, backend=backend)
            setattr(parent, child_name, new)
    return report


def _convert_problem(name: str, linear: nn.Linear, skip, holders) -> str | None:
    if _skipped_by(name, skip):
        return "in skip"
    if type(linear) is not nn.Linear:
        return f"a subclass of nn.Linear ({type(linear).__name__}): its forward may differ, so it is left alone"
    shape = linear_shape_problem(linear.in_features, linear.out_features)
    if shape:
        return shape
    if linear.weight.dtype not in _FLOAT_DTYPES:
        return f"weight dtype {linear.weight.dtype} is not bfloat16, float16 or float32"
    others = [h for h in holders.get(id(linear.weight), []) if h != name]
    if others:
        return f"weight is tied to {', '.join(others)} (quantizing one copy would untie them)"
    return None


# ----------------------------------------------------------------------------------------------
# MLP (DeepSeek's dense MLP and shared expert)
# ----------------------------------------------------------------------------------------------
class FP8MLP(nn.Module):
    """SwiGLU MLP down_proj(silu(gate_proj(x)) * up_proj(x)) of three FP8Linear layers (DeepSeek's names).

    fused_swiglu=True runs the gate and up projections, SwiGLU and the down projection's input quantization through
    dg.fp8_gemm_swiglu (one kernel, or where that measured slower, configs.fused_epilogue_pays, one gate/up GEMM then
    the Triton SwiGLU and quantize: the same bits) on a copy of the gate and up weights interleaved per 128 rows
    (dg.prepare_gate_up; twice the gate's weight bytes more in memory), made on the first forward and again after
    load_state_dict; call refresh_gate_up() after changing those weights in place. Measured (H100, model-bench,
    bench/RESULTS.md): a DeepSeek-V3 layer step 1.01-1.04x faster at decode batch 1-64, 0.99x at 128, 1.01x at
    prefill; off by default. Needs intermediate_size a multiple of 128 and a
    bias-free gate and up. Its SwiGLU is computed in fp32 and rounded once to bf16 (deepergemm.swiglu's formula), the
    unfused forward's in x's dtype (F.silu, then the product, each rounded), so the two differ in rounding."""

    def __init__(self, hidden_size: int, intermediate_size: int, device=None, *, backend: str = "auto",
                 fused_swiglu: bool = False):
        super().__init__()
        if not isinstance(fused_swiglu, bool):
            raise TypeError(f"fused_swiglu must be a bool, got {type(fused_swiglu).__name__}")
        if fused_swiglu and intermediate_size % GROUP_K:
            raise ValueError(f"fused_swiglu needs intermediate_size a multiple of {GROUP_K} (gate and up rows "
                             f"interleave per {GROUP_K}), got {intermediate_size}")
        self.gate_proj = FP8Linear(hidden_size, intermediate_size, device=device, backend=backend)
        self.up_proj = FP8Linear(hidden_size, intermediate_size, device=device, backend=backend)
        self.down_proj = FP8Linear(intermediate_size, hidden_size, device=device, backend=backend)
        self.fused_swiglu = fused_swiglu
        self.backend = backend
        self._gate_up: tuple[torch.Tensor, torch.Tensor] | None = None
        self._register_load_state_dict_pre_hook(lambda *args, **kwargs: self.refresh_gate_up())

    def refresh_gate_up(self) -> None:
        """Forget the interleaved gate/up copy (fused_swiglu): the next forward makes it from the current weights."""
        self._gate_up = None

    def _prepared_gate_up(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._gate_up is None:
            if self.gate_proj.bias is not None or self.up_proj.bias is not None:
                raise ValueError("fused_swiglu needs gate_proj and up_proj without bias")
            # (dg.prepare_gate_up's reordering without its checks, which read data pointers: the layers' own
            # parameters have the shapes it needs, and this may run inside torch.compile)
            gate, up = self.gate_proj, self.up_proj
            self._gate_up = (interleave_gate_up(gate.weight, up.weight),
                             interleave_gate_up(gate.weight_scale_inv, up.weight_scale_inv, 1))
        return self._gate_up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fused_swiglu:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        w, w_s = self._prepared_gate_up()
        x2 = x.reshape(-1, x.shape[-1])
        a, a_s = dg.quantize_act(x2 if x2.is_contiguous() else x2.contiguous())
        h, h_s = dg.fp8_gemm_swiglu(a, a_s, w, w_s, backend=self.backend)
        down = self.down_proj
        y = dg.fp8_gemm(h, h_s, down.weight, down.weight_scale_inv, _gemm_dtype(x.dtype), down.bias,
                        backend=down.backend)
        return y.to(x.dtype).reshape(*x.shape[:-1], down.out_features)

    def extra_repr(self) -> str:
        return f"fused_swiglu={self.fused_swiglu}"


# ----------------------------------------------------------------------------------------------
# router
# ----------------------------------------------------------------------------------------------
class TopKRouter(nn.Module):
    """Router of a MoE block: (topk_ids (T, top_k) int64, topk_weights (T, top_k) fp32) for x (T, hidden).

    logits = x @ weight.T in fp32 (weight (num_experts, hidden), DeepSeek's ``gate.weight``), then
    * scoring="softmax" (Mixtral, Qwen-MoE, DeepSeek-V2): scores = softmax(logits); the top_k scores are chosen.
    * scoring="sigmoid" (DeepSeek-V3's "noaux_tc"): scores = sigmoid(logits); the experts are chosen by
      scores + e_score_correction_bias (a Parameter (num_experts,) fp32), their weights are the scores alone.
    Group-limited choice when n_group > 1: experts form n_group equal groups, each group is rated by its best
    choice score (softmax) or the sum of its best two (sigmoid, as DeepSeek-V3), and only the experts of the
    topk_group best groups may be chosen. Then weights /= their sum when norm_topk_prob, and *=
    routed_scaling_factor. Ties go to the lower expert id (torch.topk)."""

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, *, scoring: str = "softmax", n_group: int = 1,
                 topk_group: int = 1, norm_topk_prob: bool = True, routed_scaling_factor: float = 1.0, device=None,
                 dtype=None):
        super().__init__()
        _check_count("hidden_size", hidden_size)
        _check_count("num_experts", num_experts)
        _check_count("top_k", top_k)
        _check_count("n_group", n_group)
        _check_count("topk_group", topk_group)
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
        if top_k > num_experts:
            raise ValueError(f"top_k ({top_k}) must be at most num_experts ({num_experts})")
        if num_experts % n_group:
            raise ValueError(f"num_experts ({num_experts}) must be a multiple of n_group ({n_group})")
        if topk_group > n_group:
            raise ValueError(f"topk_group ({topk_group}) must be at most n_group ({n_group})")
        if top_k > topk_group * (num_experts // n_group):
            raise ValueError(f"top_k ({top_k}) must be at most the experts of topk_group groups "
                             f"({topk_group} * {num_experts // n_group})")
        if scoring == "sigmoid" and n_group > 1 and num_experts // n_group < 2:
            raise ValueError("scoring='sigmoid' rates a group by its best two experts: n_group groups of >= 2 experts")
        _check_float_dtype("dtype", dtype)
        self.num_experts, self.top_k, self.scoring = num_experts, top_k, scoring
        self.n_group, self.topk_group = n_group, topk_group
        self.norm_topk_prob, self.routed_scaling_factor = bool(norm_topk_prob), float(routed_scaling_factor)
        weight = torch.empty(num_experts, hidden_size, dtype=dtype or torch.get_default_dtype(), device=device)
        if weight.device.type != "meta":
            nn.init.normal_(weight, std=hidden_size ** -0.5)
        self.weight = nn.Parameter(weight, requires_grad=False)
        if scoring == "sigmoid":
            self.e_score_correction_bias = nn.Parameter(torch.zeros(num_experts, device=device), requires_grad=False)
        else:
            self.register_parameter("e_score_correction_bias", None)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = F.linear(x.float(), self.weight.float())
        if self.scoring == "softmax":
            scores = logits.softmax(dim=-1)
            choice = scores
        else:
            scores = logits.sigmoid()
            choice = scores + self.e_score_correction_bias.float()
        if self.n_group > 1:
            choice = self._within_best_groups(choice)
        ids = choice.topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, ids)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return ids, weights * self.routed_scaling_factor

    def _within_best_groups(self, choice: torch.Tensor) -> torch.Tensor:
        grouped = choice.view(choice.shape[0], self.n_group, -1)
        rating = grouped.topk(2, dim=-1).values.sum(-1) if self.scoring == "sigmoid" else grouped.amax(dim=-1)
        best = rating.topk(self.topk_group, dim=-1).indices
        allowed = torch.zeros_like(rating, dtype=torch.bool).scatter_(1, best, True)
        return grouped.masked_fill(~allowed.unsqueeze(-1), float("-inf")).view_as(choice)

    def extra_repr(self) -> str:
        return (f"num_experts={self.num_experts}, top_k={self.top_k}, scoring={self.scoring!r}, "
                f"n_group={self.n_group}, topk_group={self.topk_group}, norm_topk_prob={self.norm_topk_prob}, "
                f"routed_scaling_factor={self.routed_scaling_factor}")


# ----------------------------------------------------------------------------------------------
# experts
# ----------------------------------------------------------------------------------------------
def _gemm_dtype(x_dtype: torch.dtype) -> torch.dtype:
    """The grouped GEMMs write bf16 or fp32: bf16 for bf16 tokens, fp32 (rounded once later) for the others."""
    return torch.bfloat16 if x_dtype == torch.bfloat16 else torch.float32


def _forward_only(module: str, x: torch.Tensor) -> None:
    if torch.is_grad_enabled() and x.requires_grad:
        raise NotImplementedError(f"deepergemm.nn.{module} is forward only (the GEMMs have no backward yet), but x "
                                  "requires grad and grad mode is on: call it under torch.no_grad() or "
                                  "torch.inference_mode(), or pass x.detach()")


class FP8Experts(nn.Module):
    """num_experts SwiGLU experts, expert e: y = down_e(silu(gate_e(x)) * up_e(x)), with FP8 weights stacked as
    transformers stores them (requires_grad=False):

        gate_up_proj (E, 2I, H) e4m3, rows [0, I) gate and [I, 2I) up; gate_up_proj_scale_inv (E, 2I/128, H/128)
        down_proj    (E, H, I) e4m3;                                     down_proj_scale_inv  (E, ceil(H/128), I/128)

    forward(x (T, H) or (..., H), topk_ids (T, k) int32/int64, topk_weights (T, k)) -> (T, H) or (..., H) in x's
    dtype: sum over k of topk_weights[t, k] * expert_{topk_ids[t, k]}(x[t]); an id outside [0, E) (-1: an expert of
    another rank) adds nothing. Each expert's rows are quantized per 1x128 group, its GEMM results rounded to bf16
    (fp32 for fp16/fp32 tokens), the combine sums in fp32.

    How: x is quantized once (T rows), its rows copied to the contiguous grouped layout (build_contiguous_layout
    with max_rows = contiguous_rows_bound: static shapes, no host synchronization, no choice ever dropped), one
    grouped GEMM for gate and up, SiLU(gate) * up in torch (fp32) on the T*k chosen rows only, quantized and copied back
    to the layout, one grouped GEMM for down, and unpermute_tokens for the weighted combine. H and I must be
    positive multiples of 128 (the GEMMs' K), num_experts at most 256 (one launch). backend: "auto", "ptx" or
    "reference" (the grouped GEMMs have no cuBLAS form).

    fused_swiglu=True runs the gate/up GEMM, SwiGLU and the down projection's input quantization as one grouped
    kernel (dg.m_grouped_fp8_gemm_contiguous_swiglu, reading gate_up_proj as stored: no copy), whose output rows are
    already in the layout the down GEMM reads: no gather, no torch SiLU, no separate quantization, no copy back. Its
    SwiGLU is deepergemm.swiglu's (gate and up rounded to bf16, silu(gate) * up in fp32, h rounded once to bf16 before
    its quantization), for every token dtype; the unfused forward quantizes the fp32 product (of the fp32 GEMM
    results for fp16/fp32 tokens), so the two differ in rounding. Needs intermediate_size a multiple of 128."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, block_size=BLOCK_SIZE,
                 device=None, *, backend: str = "auto", fused_swiglu: bool = False):
        super().__init__()
        if not isinstance(fused_swiglu, bool):
            raise TypeError(f"fused_swiglu must be a bool, got {type(fused_swiglu).__name__}")
        _check_count("num_experts", num_experts)
        _check_count("hidden_size", hidden_size)
        _check_count("intermediate_size", intermediate_size)
        if num_experts > MAX_GROUPS:
            raise ValueError(f"num_experts must be at most {MAX_GROUPS} (the grouped GEMM's groups per launch), "
                             f"got {num_experts}")
        for name, size in (("hidden_size", hidden_size), ("intermediate_size", intermediate_size)):
            if size % GROUP_K:
                raise ValueError(f"{name} must be a multiple of {GROUP_K} (the K of a grouped GEMM), got {size}")
        _check_block_size(block_size)
        _check_backend(backend, grouped=True)
        self.num_experts, self.hidden_size, self.intermediate_size = num_experts, hidden_size, intermediate_size
        self.block_size = BLOCK_SIZE
        self.backend = backend
        self.fused_swiglu = fused_swiglu
        e, h, i = num_experts, hidden_size, intermediate_size
        self.gate_up_proj = _fp8_param((e, 2 * i, h), device)
        self.gate_up_proj_scale_inv = _scale_param((e, *weight_scale_shape(2 * i, h)), device)
        self.down_proj = _fp8_param((e, h, i), device)
        self.down_proj_scale_inv = _scale_param((e, *weight_scale_shape(h, i)), device)

    @classmethod
    def from_weights(cls, gate_up_proj: torch.Tensor, down_proj: torch.Tensor, *,
                     backend: str = "auto", fused_swiglu: bool = False) -> "FP8Experts":
        """Experts from unquantized stacked weights: gate_up_proj (E, 2I, H) (rows [0, I) gate, [I, 2I) up) and
        down_proj (E, H, I), bf16, fp16 or fp32; each expert is quantized in its own 128x128 blocks (I and H are
        multiples of 128, so no block straddles two experts, or gate and up)."""
        for name, t in (("gate_up_proj", gate_up_proj), ("down_proj", down_proj)):
            if not isinstance(t, torch.Tensor) or t.dim() != 3:
                raise ValueError(f"{name} must be a 3-D tensor (experts, N, K), got "
                                 f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        e, two_i, h = gate_up_proj.shape
        if two_i % 2 or tuple(down_proj.shape) != (e, h, two_i // 2):
            raise ValueError(f"gate_up_proj must be (E, 2I, H) and down_proj (E, H, I): got "
                             f"{tuple(gate_up_proj.shape)} and {tuple(down_proj.shape)}")
        i = two_i // 2
        experts = cls(e, h, i, device="meta", backend=backend, fused_swiglu=fused_swiglu)
        with torch.no_grad():
            q1, s1 = dg.quantize_weight(gate_up_proj.detach().reshape(e * 2 * i, h))
            q2, s2 = dg.quantize_weight(down_proj.detach().reshape(e * h, i))
        experts.gate_up_proj = nn.Parameter(q1.view(e, 2 * i, h), requires_grad=False)
        experts.gate_up_proj_scale_inv = nn.Parameter(s1.view(e, -1, h // GROUP_K), requires_grad=False)
        experts.down_proj = nn.Parameter(q2.view(e, h, i), requires_grad=False)
        experts.down_proj_scale_inv = nn.Parameter(s2.view(e, -1, i // GROUP_K), requires_grad=False)
        return experts

    def forward(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"x must be (..., hidden_size={self.hidden_size}), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        _forward_only("FP8Experts", x)
        x2 = x.reshape(-1, self.hidden_size)
        tokens = x2.shape[0]
        if not isinstance(topk_ids, torch.Tensor) or topk_ids.dim() != 2 or topk_ids.shape[0] != tokens:
            raise ValueError(f"topk_ids must be (T, top_k) with T = {tokens} tokens of x, got "
                             f"{tuple(topk_ids.shape) if isinstance(topk_ids, torch.Tensor) else type(topk_ids)}")
        top_k = topk_ids.shape[1]
        # (ints in eager; under torch.compile a varying token count is traced symbolically, the bound with it)
        bound = dg.contiguous_rows_bound(int(tokens), int(top_k), self.num_experts)
        layout = dg.build_contiguous_layout(topk_ids, self.num_experts, max_rows=bound)
        out_dtype = _gemm_dtype(x.dtype)

        # quantize the T tokens once, then copy rows (and their scales) to the layout: the same bits as quantizing
        # the permuted rows, without quantizing the padding
        q, s = dg.quantize_act(x2 if x2.is_contiguous() else x2.contiguous())
        a, a_s = dg.permute_tokens(q, layout), dg.permute_tokens(s, layout)
        if self.fused_swiglu:  # h quantized, in the layout's rows (padding rows unwritten: down never stores them)
            a2, a2_s = dg.m_grouped_fp8_gemm_contiguous_swiglu(a, a_s, self.gate_up_proj, self.gate_up_proj_scale_inv,
                                                               layout, backend=self.backend)
        else:
            a2, a2_s = self._swiglu_unfused(a, a_s, layout, out_dtype)
        down = dg.m_grouped_fp8_gemm_contiguous(a2, a2_s, self.down_proj, self.down_proj_scale_inv, layout,
                                                out_dtype=out_dtype, backend=self.backend)
        y = dg.unpermute_tokens(down, layout, topk_weights)
        return y.to(x.dtype).reshape(x.shape)

    def _swiglu_unfused(self, a, a_s, layout, out_dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The down projection's input in the layout's rows: the gate/up GEMM, SiLU(gate) * up in fp32 on the chosen
        rows, quantized and copied back."""
        gate_up = dg.m_grouped_fp8_gemm_contiguous(a, a_s, self.gate_up_proj, self.gate_up_proj_scale_inv, layout,
                                                   out_dtype=out_dtype, backend=self.backend)

        # SiLU(gate) * up on the chosen rows only (the layout's padding rows were never written)
        rows = layout.row_of.reshape(-1)
        chosen = gate_up.index_select(0, rows.clamp(min=0).long())
        inter = self.intermediate_size
        q2, s2 = dg.quantize_act(F.silu(chosen[:, :inter].float()) * chosen[:, inter:])  # fp32, rounded once
        choice_of = _choice_of_rows(rows, layout.rows)
        return torch.ops.deepergemm.moe_permute(q2, choice_of), torch.ops.deepergemm.moe_permute(s2, choice_of)

    def extra_repr(self) -> str:
        return (f"num_experts={self.num_experts}, hidden_size={self.hidden_size}, "
                f"intermediate_size={self.intermediate_size}, backend={self.backend!r}, "
                f"fused_swiglu={self.fused_swiglu}")


def _choice_of_rows(row_of: torch.Tensor, rows: int) -> torch.Tensor:
    """(rows,) int32: for each row of the layout, the flat index t * k + j of the choice placed there, -1 for
    padding (what moe_permute reads to place each choice's own activation row)."""
    n = row_of.shape[0]
    choice_of = torch.full((rows + 1,), -1, dtype=torch.int32, device=row_of.device)
    target = torch.where(row_of >= 0, row_of, rows).long()  # dropped choices: a spare last slot
    choice_of.scatter_(0, target, torch.arange(n, dtype=torch.int32, device=row_of.device))
    return choice_of[:rows]


# ----------------------------------------------------------------------------------------------
# MoE block
# ----------------------------------------------------------------------------------------------
class FP8MoE(nn.Module):
    """A MoE block with DeepSeek's module names: ``gate`` (TopKRouter, fp32 by default, not quantized),
    ``experts`` (FP8Experts) and, when shared_intermediate_size > 0, ``shared_experts`` (FP8MLP over every token).

    forward(x (..., H)) -> (..., H) in x's dtype: experts(x, *gate(x)) + shared_experts(x). Router options: see
    TopKRouter (DeepSeek-V3: scoring="sigmoid", n_group=8, topk_group=4, routed_scaling_factor=2.5).
    fused_swiglu: the experts' and the shared experts' fused_swiglu (FP8Experts, FP8MLP)."""

    def __init__(self, hidden_size: int, intermediate_size: int, num_experts: int, top_k: int, *,
                 shared_intermediate_size: int = 0, scoring: str = "softmax", n_group: int = 1, topk_group: int = 1,
                 norm_topk_prob: bool = True, routed_scaling_factor: float = 1.0, device=None,
                 router_dtype=torch.float32, backend: str = "auto", fused_swiglu: bool = False):
        super().__init__()
        _check_count("shared_intermediate_size", shared_intermediate_size, minimum=0)
        self.hidden_size = hidden_size
        self.gate = TopKRouter(hidden_size, num_experts, top_k, scoring=scoring, n_group=n_group,
                               topk_group=topk_group, norm_topk_prob=norm_topk_prob,
                               routed_scaling_factor=routed_scaling_factor, device=device, dtype=router_dtype)
        self.experts = FP8Experts(num_experts, hidden_size, intermediate_size, device=device, backend=backend,
                                  fused_swiglu=fused_swiglu)
        self.shared_experts = (FP8MLP(hidden_size, shared_intermediate_size, device=device, backend=backend,
                                      fused_swiglu=fused_swiglu) if shared_intermediate_size else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"x must be (..., hidden_size={self.hidden_size}), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        _forward_only("FP8MoE", x)
        x2 = x.reshape(-1, self.hidden_size)
        topk_ids, topk_weights = self.gate(x2)
        y = self.experts(x2, topk_ids, topk_weights)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x2)
        return y.reshape(x.shape)


def load_fp8_checkpoint(model: nn.Module, path, **options):
    """Load DeepSeek-V3-format FP8 safetensors shards into model (see deepergemm.checkpoint.load_fp8_checkpoint)."""
    from .checkpoint import load_fp8_checkpoint as load

    return load(model, path, **options)
