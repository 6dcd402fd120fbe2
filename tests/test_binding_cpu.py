"""The host binding (ptx/binding.cpp) without a GPU: built and loaded here (it links against torch's CPU libraries
alone), its C++ kernels of the GEMM ops driven with CPU tensors through a redispatch to the CUDA key. Its input rules
must raise exactly the errors of the Python path (deepergemm/layouts.py: same type, same message, same order of
checks), and its calls back into Python (the Python backends, deepergemm::_<op>_python) must return what the
Python path returns. The kernel launches themselves need the GPU (tests/test_gemm_kernel.py)."""
import re

import pytest
import torch

from deepergemm import extension
from deepergemm import reference as ref

pytestmark = pytest.mark.slow  # (builds the binding: ~15-30 s)
OPS = torch.ops.deepergemm
CUDA_KEY = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)


@pytest.fixture(scope="module", autouse=True)
def binding():
    problem = extension.binding_problem(require_gpu=False)
    if problem is not None:
        pytest.skip(problem)
    extension.load_binding(require_gpu=False)


def _outcome(fn):
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001 - the type and message are what is compared
        return type(exc), re.sub(r"0x[0-9a-f]+", "0x?", str(exc))
    return out


def _same_error(op, args):
    """The Python rule (the CPU kernel) and the binding's (its CUDA kernel, on the same CPU tensors) agree."""
    python = _outcome(lambda: op(*args))
    binding = _outcome(lambda: op.redispatch(CUDA_KEY, *args))
    assert isinstance(python, tuple), f"the Python path accepted a bad call: {args}"
    assert binding == python, f"binding: {binding}\npython:  {python}"


def _all_same_errors(op, cases: dict, what: str = ""):
    for name, args in cases.items():
        try:
            _same_error(op, args)
        except AssertionError as exc:
            raise AssertionError(f"{what}{name}: {exc}") from None


def _act(m, k):
    a, a_s = ref.quantize_act(torch.randn(m, k) * 3)
    return a, a_s.t().contiguous().t() if a_s.shape[1] > 1 else a_s


def _weight(n, k):
    return ref.quantize_weight(torch.randn(n, k))


def _gemm_args(m=5, n=264, k=384, bias=None, backend="reference"):
    a, a_s = _act(m, k)
    b, b_s = _weight(n, k)
    return [a, a_s, b, b_s, torch.bfloat16, bias, backend]


def _with(args, index, value):
    args = list(args)
    args[index] = value
    return args


def test_fp8_gemm_rules_match_the_python_ones():
    good = _gemm_args()
    a, a_s, b, b_s = good[:4]
    fp8 = ref.FP8_DTYPE
    odd_k = torch.randn(5, 100).to(fp8)
    cases = {
        "a dtype": _with(good, 0, a.float()),
        "a rank": _with(good, 0, a.unsqueeze(0)),
        "b dtype": _with(good, 2, b.to(torch.bfloat16)),
        "b rank": _with(good, 2, b[0]),
        "K mismatch": _with(good, 2, _weight(264, 256)[0]),
        "K rule": [odd_k, torch.ones(5, 1), torch.randn(264, 100).to(fp8), torch.ones(3, 1), torch.bfloat16, None,
                   "reference"],
        "N rule": _with(_with(good, 2, _weight(12, 384)[0]), 3, _weight(12, 384)[1]),
        "N zero": _with(_with(good, 2, b[:0]), 3, b_s[:0]),
        "a_scales dtype": _with(good, 1, a_s.double()),
        "a_scales shape": _with(good, 1, a_s[:, :2]),
        "b_scales dtype": _with(good, 3, b_s.half()),
        "b_scales shape": _with(good, 3, b_s[:1]),
        "out_dtype": _with(good, 4, torch.float16),
        "bias dtype": _with(good, 5, torch.ones(264, dtype=torch.int32)),
        "bias shape": _with(good, 5, torch.randn(263)),
        "a not K-major": _with(good, 0, a.t().contiguous().t()),
        "a row stride": _with(good, 0, torch.empty(5, 392, dtype=fp8)[:, :384]),
        "a misaligned": _with(good, 0, torch.empty(5 * 384 + 1, dtype=torch.uint8)[1:].view(fp8).view(5, 384)),
        "b not K-major": _with(good, 2, b.t().contiguous().t()),
        "backend": _with(good, 6, "cudnn"),
    }
    _all_same_errors(OPS.fp8_gemm.default, cases)


def test_recipe_256_rules_match_the_python_ones():
    """The 256-K recipe's scales: taken by fp8_gemm (also through the binding), mixed recipes and the other ops
    refused with the same words."""
    x, w = torch.randn(5, 512), torch.randn(264, 512)
    a, a_s = ref.quantize_act(x, group_k=256)
    a_s = a_s.t().contiguous().t()
    b, b_s = ref.quantize_weight(w, block_k=256)
    good = [a, a_s, b, b_s, torch.bfloat16, None, "reference"]
    want = OPS.fp8_gemm.default(*good)
    assert torch.equal(OPS.fp8_gemm.default.redispatch(CUDA_KEY, *good).view(torch.int16), want.view(torch.int16))
    _all_same_errors(OPS.fp8_gemm.default, {
        "b_scales of the 128 recipe": _with(good, 3, b_s.repeat_interleave(2, dim=1)),
        "b_scales columns": _with(good, 3, b_s[:, :1]),
        "a_scales columns": _with(good, 1, a_s[:, :1]),
    })
    b256, b256_s = ref.quantize_weight(torch.randn(256, 512), block_k=256)
    _all_same_errors(OPS.fp8_gemm_fp8_out.default, {"fp8 output": [a, a_s, b256, b256_s, None, False, "reference"]})


def test_fp8_gemm_through_the_binding_calls_the_python_backend():
    for m, bias in ((1, None), (65, torch.randn(264, dtype=torch.bfloat16)), (130, torch.randn(264))):
        args = _gemm_args(m=m, bias=bias)
        want = OPS.fp8_gemm.default(*args)
        got = OPS.fp8_gemm.default.redispatch(CUDA_KEY, *args)
        assert got.dtype == torch.bfloat16 and torch.equal(got.view(torch.int16), want.view(torch.int16)), m
    empty = OPS.fp8_gemm.default.redispatch(CUDA_KEY, *_gemm_args(m=0))  # M = 0: an empty result, no backend call
    assert empty.shape == (0, 264)


def _quantized_output_cases(good, backend_index):
    """The argument rules fp8_gemm_fp8_out and fp8_gemm_swiglu share with fp8_gemm, as broken copies of `good`
    (a (5, 384) activation and its scales, b and b_scales at indices 2 and 3, N = b's rows)."""
    a, a_s, b, b_s = good[:4]
    n, k = b.shape
    misaligned = torch.empty(5 * k + 1, dtype=torch.uint8)[1:].view(ref.FP8_DTYPE).view(5, k)
    return {
        "N rule": _with(_with(good, 2, _weight(12, k)[0]), 3, _weight(12, k)[1]),
        "a dtype": _with(good, 0, a.float()),
        "b rank": _with(good, 2, b[0]),
        "K mismatch": _with(good, 2, _weight(n, 256)[0]),
        "a_scales shape": _with(good, 1, a_s[:, :2]),
        "b_scales shape": _with(good, 3, b_s[:1]),
        "a not K-major": _with(good, 0, a.t().contiguous().t()),
        "a misaligned": _with(good, 0, misaligned),
        "backend": _with(good, backend_index, "cudnn"),
    }


def test_fp8_gemm_fp8_out_rules_match_the_python_ones():
    a, a_s = _act(5, 384)
    b, b_s = _weight(256, 384)
    good = [a, a_s, b, b_s, None, False, "reference"]
    cases = {
        "N whole groups": _with(_with(good, 2, _weight(136, 384)[0]), 3, _weight(136, 384)[1]),
        "bias dtype": _with(good, 4, torch.ones(256, dtype=torch.int32)),
        "bias shape": _with(good, 4, torch.randn(255)),
        **_quantized_output_cases(good, backend_index=6),
    }
    _all_same_errors(OPS.fp8_gemm_fp8_out.default, cases)


def test_fp8_gemm_fp8_out_through_the_binding_calls_the_python_backend():
    b, b_s = _weight(384, 256)
    op = OPS.fp8_gemm_fp8_out.default
    for m, bias, ue8m0 in ((1, None, False), (65, torch.randn(384, dtype=torch.bfloat16), True),
                           (130, torch.randn(384), False)):
        a, a_s = _act(m, 256)
        args = [a, a_s, b, b_s, bias, ue8m0, "reference"]
        (q, s), (q_want, s_want) = op.redispatch(CUDA_KEY, *args), op(*args)
        assert torch.equal(q.view(torch.uint8), q_want.view(torch.uint8)) and torch.equal(s, s_want), m
        assert s.stride() == s_want.stride(), m
    a, a_s = _act(0, 256)
    q, s = OPS.fp8_gemm_fp8_out.default.redispatch(CUDA_KEY, a, a_s, b, b_s, None, False, "reference")
    assert q.shape == (0, 384) and s.shape == (0, 3)


def test_fp8_gemm_swiglu_rules_match_the_python_ones():
    a, a_s = _act(5, 384)
    b, b_s = _weight(512, 384)
    good = [a, a_s, b, b_s, False, "reference"]
    cases = {
        "N whole gate/up pairs": _with(_with(good, 2, _weight(384, 384)[0]), 3, _weight(384, 384)[1]),
        "N one group": _with(_with(good, 2, _weight(128, 384)[0]), 3, _weight(128, 384)[1]),
        **_quantized_output_cases(good, backend_index=5),
    }
    _all_same_errors(OPS.fp8_gemm_swiglu.default, cases)


def test_fp8_gemm_swiglu_through_the_binding_calls_the_python_backend():
    b, b_s = _weight(512, 256)
    op = OPS.fp8_gemm_swiglu.default
    for m, ue8m0 in ((1, False), (65, True), (130, False)):
        a, a_s = _act(m, 256)
        args = [a, a_s, b, b_s, ue8m0, "reference"]
        (q, s), (q_want, s_want) = op.redispatch(CUDA_KEY, *args), op(*args)
        assert q.shape == (m, 256) and s.shape == (m, 2), m
        assert torch.equal(q.view(torch.uint8), q_want.view(torch.uint8)) and torch.equal(s, s_want), m
        assert s.stride() == s_want.stride(), m
    a, a_s = _act(0, 256)
    q, s = op.redispatch(CUDA_KEY, a, a_s, b, b_s, False, "reference")
    assert q.shape == (0, 256) and s.shape == (0, 2)


def _grouped(m=300, groups=3, n=136, k=256):
    a, a_s = _act(m, k)
    b = torch.stack([_weight(n, k)[0] for _ in range(groups)])
    b_s = torch.stack([_weight(n, k)[1] for _ in range(groups)])
    return a, a_s, b, b_s


def test_grouped_rules_match_and_the_reference_round_trip():
    a, a_s, b, b_s = _grouped()
    sizes = torch.tensor([100, 0, 60], dtype=torch.int32)
    out = torch.full((300, 136), float("nan"), dtype=torch.bfloat16)
    good = [a, a_s, b, b_s, sizes, out, False, "reference"]
    cases = {
        "a rank": _with(good, 0, a.unsqueeze(0)),
        "groups": _with(good, 4, sizes[:2]),
        "sizes dtype": _with(good, 4, sizes.long()),
        "out shape": _with(good, 5, out[:, :128]),
        "out dtype": _with(good, 5, out.half()),
        "b_scales shape": _with(good, 3, b_s[:, :1]),
        "cublas": _with(good, 7, "cublas"),
    }
    _all_same_errors(OPS.m_grouped_fp8_gemm_contiguous.default, cases, "contiguous, ")
    want = out.clone()
    OPS.m_grouped_fp8_gemm_contiguous.default(a, a_s, b, b_s, sizes, want, False, "reference")
    OPS.m_grouped_fp8_gemm_contiguous.default.redispatch(CUDA_KEY, a, a_s, b, b_s, sizes, out, False, "reference")
    assert torch.equal(out.view(torch.int16), want.view(torch.int16))
    # masked
    a3, a3_s = _act(2 * 40, 256)
    a3, a3_s = a3.view(2, 40, 256), a3_s.contiguous().view(2, 40, 2)
    b2, b2_s = b[:2].contiguous(), b_s[:2].contiguous()
    masked = torch.tensor([7, 40], dtype=torch.int32)
    out3 = torch.full((2, 40, 136), float("nan"))
    good = [a3, a3_s, b2, b2_s, masked, 16, out3, "reference"]
    _all_same_errors(OPS.m_grouped_fp8_gemm_masked.default,
                     {"expected_m": _with(good, 5, 0), "groups": _with(good, 2, b[:3].contiguous()),
                      "a_scales shape": _with(good, 1, a3_s[:, :30])}, "masked, ")
    want3 = out3.clone()
    OPS.m_grouped_fp8_gemm_masked.default(*_with(good, 6, want3))
    OPS.m_grouped_fp8_gemm_masked.default.redispatch(CUDA_KEY, *good)
    # (rows past masked_m keep their NaN in both)
    assert torch.equal(out3.isnan(), want3.isnan()) and torch.equal(out3.nan_to_num(7), want3.nan_to_num(7))
    assert not out3[0, :7].isnan().any() and out3[0, 7:].isnan().all()


def test_grouped_swiglu_rules_match_and_the_reference_round_trip():
    a, a_s, b, b_s = _grouped(n=512)
    sizes = torch.tensor([100, 0, 60], dtype=torch.int32)
    good = [a, a_s, b, b_s, sizes, 0, False, "reference"]
    b_odd, b_odd_s = _grouped(n=384)[2:]
    cases = {
        "N gate and up halves": _with(_with(good, 2, b_odd), 3, b_odd_s),
        "N one group": _with(_with(good, 2, b[:, :128].contiguous()), 3, b_s[:, :1].contiguous()),
        "a rank": _with(good, 0, a.unsqueeze(0)),
        "groups": _with(good, 4, sizes[:2]),
        "sizes dtype": _with(good, 4, sizes.long()),
        "b_scales shape": _with(good, 3, b_s[:, :1]),
        "expected_m": _with(good, 5, -1),
        "cublas": _with(good, 7, "cublas"),
    }
    op = OPS.m_grouped_fp8_gemm_contiguous_swiglu.default
    _all_same_errors(op, cases, "grouped SwiGLU, ")
    for ue8m0 in (False, True):
        args = _with(_with(good, 6, ue8m0), 5, 40)
        (q, s), (q_want, s_want) = op.redispatch(CUDA_KEY, *args), op(*args)
        assert q.shape == (300, 256) and s.shape == (300, 2) and s.stride() == s_want.stride()
        assert torch.equal(q.view(torch.uint8), q_want.view(torch.uint8)) and torch.equal(s, s_want)
    q, s = op.redispatch(CUDA_KEY, a[:0], a_s[:0], b, b_s, torch.zeros(3, dtype=torch.int32), 0, False, "reference")
    assert q.shape == (0, 256) and s.shape == (0, 2)
    # masked
    a3, a3_s = a[:2 * 40].view(2, 40, 256), a_s[:2 * 40].contiguous().view(2, 40, 2)
    b2, b2_s = b[:2].contiguous(), b_s[:2].contiguous()
    masked = torch.tensor([7, 40], dtype=torch.int32)
    good = [a3, a3_s, b2, b2_s, masked, 16, False, "reference"]
    op = OPS.m_grouped_fp8_gemm_masked_swiglu.default
    _all_same_errors(op, {"N gate and up halves": _with(_with(good, 2, b_odd[:2].contiguous()), 3,
                                                        b_odd_s[:2].contiguous()),
                          "expected_m": _with(good, 5, 0), "groups": _with(good, 2, b.contiguous()),
                          "masked dtype": _with(good, 4, masked.long()), "cublas": _with(good, 7, "cublas"),
                          "max_m": _with(_with(good, 0, a3[:, :38].contiguous()), 1, a3_s[:, :38].contiguous())},
                     "masked SwiGLU, ")
    (q, s), (q_want, s_want) = op.redispatch(CUDA_KEY, *good), op(*good)
    assert q.shape == (2, 40, 256) and s.shape == (2, 40, 2) and s.stride() == s_want.stride()
    assert torch.equal(q.view(torch.uint8), q_want.view(torch.uint8)) and torch.equal(s, s_want)


def test_binding_reads_the_backend_switch_it_is_given():
    args = _gemm_args()
    torch.ops.deepergemm_native.configure("not-a-backend")
    try:
        kind, message = _outcome(lambda: OPS.fp8_gemm.default.redispatch(CUDA_KEY, *_with(args, 6, "auto")))
        assert kind is ValueError and "DEEPERGEMM_BACKEND must be one of" in message, message
    finally:
        torch.ops.deepergemm_native.configure("auto")


def test_placed_gemm_rules_match_the_python_ones():
    a, a_s = _act(5, 256)
    _, b_s = _weight(264, 256)
    pool = torch.randint(0, 255, (64 * 32, 128), dtype=torch.uint8)
    slots = torch.randint(0, 64, (2, 32), dtype=torch.int32)
    good = [a, a_s, pool, slots, b_s, 264, 32, 128, torch.bfloat16, None, None, True, "reference"]
    _all_same_errors(OPS.fp8_gemm_placed.default, {
        "slab_rows": _with(good, 6, 48),
        "pool dtype": _with(good, 2, pool.to(torch.int8)),
        "pool shape": _with(good, 2, pool[:-1]),
        "slots dtype": _with(good, 3, slots.long()),
        "slots rank": _with(good, 3, slots[0]),
        "n": _with(good, 5, 0),
        "coverage": _with(good, 3, slots[:, :10].contiguous()),
        "split_rows": _with(good, 7, 265),
        "a's K": _with(good, 3, torch.randint(0, 64, (3, 32), dtype=torch.int32)),
        "b_scales shape": _with(good, 4, b_s[:, :1]),
        "sm_side dtype": _with(good, 10, torch.zeros(256, dtype=torch.int32)),
        "sm_side shape": _with(good, 10, torch.zeros(132, dtype=torch.uint8)),
        "backend": _with(good, 12, "fast"),
    })
