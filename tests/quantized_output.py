"""What the tests of the ops that return a quantized output (fp8 output, fused SwiGLU) share: bit-for-bit
comparison of (q, scales) pairs, and the CUDA-graph and torch.compile check."""
import torch

from deepergemm import layouts

FP8 = torch.float8_e4m3fn


def bits(t: torch.Tensor) -> torch.Tensor:
    """t's bytes (1-byte dtypes) or 32-bit words, for bit-for-bit comparison (NaN equals its own bits)."""
    return t.contiguous().view(torch.uint8) if t.element_size() == 1 else t.contiguous().view(torch.int32)


def assert_same(got, want, what=""):
    """(q, scales) equal to (q_want, scales_want) bit for bit, q fp8 contiguous, the scales fp32 in the activation
    layout."""
    (q, s), (q_want, s_want) = got, want
    assert q.dtype == FP8 and q.shape == q_want.shape and q.is_contiguous(), what
    assert s.dtype == torch.float32 and s.shape == s_want.shape, what
    assert layouts.is_act_scale_layout(s) and (s.shape[0] <= 1 or s.stride(0) == 1), f"{what}: scale layout {s.stride()}"
    if s.shape[1] > 1:
        assert s.stride(1) == layouts.act_scale_stride(s.shape[0]), what
    bad_q = (bits(q) != bits(q_want)).sum().item()
    bad_s = (bits(s) != bits(s_want)).sum().item()
    assert bad_q == 0 and bad_s == 0, f"{what}: {bad_q} q bytes and {bad_s} scales differ"


def check_graph_and_compile(fn, args, fresh_act, want):
    """fn(*args) -> (q, scales), args[0:2] the activation and its scales: captured in a CUDA graph, then twice new
    activations (fresh_act() -> (a, a_s)) copied into the captured inputs, the outputs poisoned and the graph replayed,
    each replay equal to want() bit for bit; then torch.compile(fn, fullgraph=True) equal to fn."""
    from deepergemm.benchmark.timing import capture_graph

    graph, (q, s) = capture_graph(fn, *args)
    a, a_s = args[0], args[1]
    for _ in range(2):
        a2, a2_s = fresh_act()
        a.copy_(a2)
        a_s.copy_(a2_s)
        q.view(torch.uint8).fill_(0x7F)  # NaN in e4m3fn
        s.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert_same((q, s), want(), "graph replay")
    compiled = torch.compile(fn, fullgraph=True)
    assert_same(compiled(*args), fn(*args), "compiled")
