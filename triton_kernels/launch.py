"""A cheaper Triton launch for the hot kernels: the compiled kernel looked up under our own key.

``kernel[grid](...)`` (JITFunction.run) binds every argument, builds Triton's specialization and its cache key as
strings, checks the kernel's globals and reads several knobs on every call: tens of microseconds of host time,
more than a decode-size quantization takes on the GPU. ``FastLaunch`` does that once per key and then launches the
cached ``CompiledKernel`` directly through its runner (``compiled[grid](*args)``, the launch Triton itself makes
after its lookup).

The key is finer than Triton's specialization, so a hit always finds the kernel Triton would have run: per
tensor its dtype and whether its address is 16-byte aligned; per integer whether it is 1, whether it is a
multiple of 16 and whether it needs 64 bits; per other value (the constexprs, bools) the value itself; and the
launch options (num_warps, ...) and the current device. A miss launches through Triton's own path, which compiles
or finds the kernel, and stores what it returned.

The runner passes Triton's launch hooks on (profilers such as proton still see every launch). Used only with
DEEPERGEMM_TRITON_FAST_LAUNCH=1 (configs.triton_fast_launch_enabled: opt-in until measured on a GPU), and never
under the interpreter (TRITON_INTERPRET=1: no compiled kernel). Triton options changed by environment after a
kernel's first launch (TRITON_DEBUG, ...) do not reach the cached kernels.
"""
from __future__ import annotations

import os

import torch
import triton

from deepergemm import configs

_INT32_MIN, _INT32_MAX = -2 ** 31, 2 ** 31 - 1

# Triton reads it once, when it is imported
_INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


def arg_key(value) -> object:
    """What of one argument can change the kernel Triton compiles for it (see the module's docstring)."""
    if isinstance(value, torch.Tensor):
        return value.dtype, value.data_ptr() % 16 == 0
    if isinstance(value, bool) or not isinstance(value, int):
        return value
    return value == 1, value % 16 == 0, not _INT32_MIN <= value <= _INT32_MAX


class FastLaunch:
    """``FastLaunch(jit_fn)(grid, *args, **constexprs_and_options)`` launches like ``jit_fn[grid](...)``.

    Positional arguments are the kernel's leading parameters; keyword arguments are its remaining parameters
    (constexprs) by name and Triton's launch options (num_warps, enable_fp_fusion, ...). Every call site passes
    the same keywords in the same order (they are part of the key as given)."""

    def __init__(self, fn: triton.runtime.JITFunction):
        self.fn = fn
        self.arg_names = tuple(fn.arg_names)
        self.compiled: dict[tuple, object] = {}

    def __call__(self, grid: tuple[int, ...], *args, **kwargs) -> None:
        if _INTERPRETING or not configs.triton_fast_launch_enabled():
            self.fn[grid](*args, **kwargs)
            return
        key = (torch.cuda.current_device(), *map(arg_key, args), *kwargs.items())
        compiled = self.compiled.get(key)
        if compiled is None:
            compiled = self.fn[grid](*args, **kwargs)
            if compiled is not None:  # (None: Triton did not hand a compiled kernel back; ask it again next time)
                self.compiled[key] = compiled
            return
        params = args + tuple(kwargs[name] for name in self.arg_names[len(args):])
        compiled[grid](*params)
