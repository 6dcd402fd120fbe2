"""CUDA sources of the inline-PTX kernels, shipped as package data (deepergemm._ptx).

Nothing here is imported as Python; deepergemm/extension.py reads the .cu/.cuh files next to this one.
"""
