"""Make deepergemm.triton_kernels and deepergemm._ptx importable from a source checkout.

An installed deepergemm (pip install . or -e .) maps the top-level folders triton_kernels/ and ptx/ to these
sub-packages. Used straight from a checkout through PYTHONPATH (or when an editable finder is shadowed by the
checkout on sys.path) that mapping is missing; register the folders under their package names instead.
"""
from __future__ import annotations

import importlib.util
import pathlib
import sys

_SUBPACKAGES = {"triton_kernels": "triton_kernels", "_ptx": "ptx"}


def register_checkout_subpackages(package: str) -> None:
    root = pathlib.Path(__file__).resolve().parent.parent
    for sub, folder in _SUBPACKAGES.items():
        name = f"{package}.{sub}"
        if name in sys.modules:
            continue
        try:
            if importlib.util.find_spec(name) is not None:
                continue
        except ModuleNotFoundError:
            pass
        init = root / folder / "__init__.py"
        if not init.is_file():
            continue  # an installed package without this part: the import error will say so when used
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        setattr(sys.modules[package], sub, module)
