"""Shared by the developer scripts in bench/: one GEMM's inputs, quantized the DeepSeek way, in the layouts
the compiled kernel takes, and a launcher for a compiled variant."""
import pathlib
import sys
from dataclasses import dataclass

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # also under ncu / compute-sanitizer
from deepergemm import configs, cublas, extension, kernels, layouts  # noqa: E402
from deepergemm import reference as ref  # noqa: E402


@dataclass
class GemmCase:
    a: torch.Tensor          # (M, K) fp8
    a_scales: torch.Tensor   # (M, K/128) fp32, M-major (the kernel's and cuBLAS's layout)
    b: torch.Tensor          # (N, K) fp8
    b_scales: torch.Tensor   # (N/128, K/128) fp32
    out: torch.Tensor        # (M, N) bf16
    sms: int                 # SMs of the GPU (the persistent grid)
    stream: int              # the current CUDA stream's handle

    def launch(self, kernel: extension.LoadedKernel, group_n: int = 16, l2_hints: int | None = None,
               trace_log: torch.Tensor | None = None, stream_k: bool | None = None) -> None:
        """One launch of a loaded variant (extension.load(...)): no bias, bf16 out, a DG_TRACE / DG_LIFETRACE log
        if given; L2 hints and stream-K as configs would pick them unless given."""
        variant = kernel.variant
        if l2_hints is None:
            l2_hints = configs.variant_l2_hints(self.a.shape[0], variant)
        if stream_k is None:
            stream_k = configs.stream_k_pays(self.a.shape[0], self.b.shape[0], self.a.shape[1], variant, self.sms)
        # (a traced launch runs without PDL: DG_LIFETRACE's first stamps come before griddepcontrol.wait)
        kernels.launch(kernel, self.a, self.a_scales, self.b, self.b_scales, self.out, None, group_n, l2_hints, stream_k,
                       trace_log=trace_log, pdl=False if trace_log is not None else None)

    def launch_cublas(self) -> torch.Tensor:
        return cublas.fp8_gemm_cublas(self.a, self.a_scales, self.b, self.b_scales, torch.bfloat16, None)


def make_case(shape: str, device: str = "cuda") -> GemmCase:
    """Random N(0, 1) inputs for an "MxNxK" shape."""
    m, n, k = (int(x) for x in shape.split("x"))
    a, a_s = ref.quantize_act(torch.randn(m, k, device=device))
    b, b_s = ref.quantize_weight(torch.randn(n, k, device=device))
    cuda = device == "cuda"
    return GemmCase(a, layouts.to_act_scale_layout(a_s), b, b_s,
                    torch.empty((m, n), device=device, dtype=torch.bfloat16),
                    torch.cuda.get_device_properties(0).multi_processor_count if cuda else 132,
                    torch.cuda.current_stream().cuda_stream if cuda else 0)
