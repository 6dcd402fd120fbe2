"""Triton kernels of deepergemm (installed as deepergemm.triton_kernels): quantization and epilogues."""
