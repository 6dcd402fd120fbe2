"""The host binding (ptx/binding.cpp) on a machine without a GPU: it compiles against this machine's torch headers
(the CPU wheel's; CI cannot link or load it, which needs libc10_cuda and a driver), and what it shares with
Python agrees: the variant facts' order (configs.BINDING_FIELDS), the plan's fields (kernels.plan), the op
schemas it implements (ops.py) and the constants both sides size things by."""
import pathlib
import re
import shutil
import subprocess

import pytest
import torch

from deepergemm import configs, extension, layouts

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE = (ROOT / "ptx" / "binding.cpp").read_text()
PARAMS = (ROOT / "ptx" / "params.h").read_text()


@pytest.mark.slow
def test_binding_compiles_against_the_torch_headers(tmp_path):
    home = extension.cuda_home()
    if home is None or not (home / "include" / "cuda.h").exists() or shutil.which("c++") is None:
        pytest.skip("needs a C++ compiler and the CUDA headers (CI has both)")
    from torch.utils.cpp_extension import include_paths

    # (the CPU wheel lacks c10/cuda's generated cmake header; the define skips it)
    cmd = ["c++", "-std=c++17", "-O0", "-fPIC", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE", "-Wall", "-Werror=return-type",
           *[f"-I{p}" for p in include_paths()], f"-I{ROOT / 'ptx'}", f"-I{home / 'include'}", "-c",
           str(ROOT / "ptx" / "binding.cpp"), "-o", str(tmp_path / "binding.o")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert done.returncode == 0 and not errors, done.stderr[-6000:]


def test_variant_facts_are_sent_in_the_bindings_order():
    body = re.search(r"struct VariantInfo \{\s*int ([^;]+);", SOURCE).group(1)
    fields = tuple(name.strip() for name in body.split(","))
    assert fields == configs.BINDING_FIELDS
    assert f"constexpr int kVariantInfoFields = {len(fields)};" in SOURCE
    variant = configs.parse_key("128x128s6wc2")
    info = dict(zip(configs.BINDING_FIELDS, variant.binding_info()))
    assert info == {"block_m": 128, "block_n": 128, "stages": 6, "acc": 1, "cluster_m": 2, "cluster_n": 1, "splits": 1,
                    "math_wgs": 2, "grouping": 0, "smem_bytes": variant.smem_bytes, "swapped": 0, "threads": 384,
                    "epi_n": 64, "fp8_out": 0}
    assert dict(zip(configs.BINDING_FIELDS, configs.parse_key("128x128s6wc2q").binding_info()))["fp8_out"] == 1
    assert dict(zip(configs.BINDING_FIELDS, configs.parse_key("64x256s5dswiglu").binding_info()))["fp8_out"] == 2


def test_plan_fields_match():
    body = re.search(r"struct Plan \{(.*?)\};", SOURCE, re.S).group(1)
    names = re.findall(r"(\w+)(?:,|;)", re.sub(r"//[^\n]*", "", body))
    assert names == ["variant", "group_n", "l2_hints", "stream_k", "side0_n_tiles", "pdl", "unfused"]
    assert f"constexpr int kPlanFields = {len(names)};" in SOURCE
    from deepergemm import kernels

    assert "[variant id, group_n, l2_hints, stream_k, side 0's N-tiles, pdl, unfused]" in kernels.plan.__doc__
    kinds = dict(re.findall(r"(kPlan\w+) = (\d+)", SOURCE))
    assert [int(kinds[k]) for k in ("kPlanPlain", "kPlanPlaced", "kPlanContiguous", "kPlanMasked", "kPlanFp8Out",
                                    "kPlanSwiglu", "kPlanRecipe256", "kPlanGroupedSwiglu", "kPlanMaskedSwiglu")] == \
        [kernels.PLAN_PLAIN, kernels.PLAN_PLACED, kernels.PLAN_CONTIGUOUS, kernels.PLAN_MASKED, kernels.PLAN_FP8_OUT,
         kernels.PLAN_SWIGLU, kernels.PLAN_RECIPE_256, kernels.PLAN_GROUPED_SWIGLU, kernels.PLAN_MASKED_SWIGLU]


def test_binding_implements_the_ops_python_defines():
    implemented = set(re.findall(r'm\.impl\("(\w+)", &dgb::\w+\);', SOURCE.split("TORCH_LIBRARY_IMPL(deepergemm, CUDA")[1]))
    assert implemented == {"fp8_gemm", "fp8_gemm_placed", "fp8_gemm_fp8_out", "fp8_gemm_swiglu",
                           "m_grouped_fp8_gemm_contiguous", "m_grouped_fp8_gemm_masked",
                           "m_grouped_fp8_gemm_contiguous_swiglu", "m_grouped_fp8_gemm_masked_swiglu"}
    for name in implemented:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"deepergemm::{name}", "CompositeExplicitAutograd")
        # the Python backends' op the binding calls has the same schema
        ours = str(getattr(torch.ops.deepergemm, name).default._schema)
        python = str(getattr(torch.ops.deepergemm, f"_{name}_python").default._schema)
        assert python.replace(f"_{name}_python(", f"{name}(") == ours
        assert f'"deepergemm::_{name}_python"' in SOURCE
    assert '"deepergemm::_plan"' in SOURCE and '"deepergemm::_sm_side_table"' in SOURCE


def test_shared_constants_agree():
    constants = dict(re.findall(r"constexpr int (k\w+) = (\d+);", PARAMS))
    assert int(constants["kBlockK"]) == configs.BLOCK_K == layouts.GROUP_K
    assert int(constants["kMaxGroups"]) == configs.MAX_GROUPS == layouts.MAX_GROUPS
    assert "kGroupedMAlignment = 128" in SOURCE and layouts.GROUPED_M_ALIGNMENT == 128
    assert f"kMaxGroupedRows = int64_t{{1}} << {layouts.MAX_GROUPED_ROWS.bit_length() - 1}" in SOURCE
    assert f"kNAlign = {layouts.N_ALIGN}" in SOURCE and f"kTmaAlignBytes = {layouts.TMA_ALIGN_BYTES}" in SOURCE
    assert "kPlacedSlabRows = {8, 16, 32, 64, 128, 256}" in SOURCE and layouts.PLACED_SLAB_ROWS == (8, 16, 32, 64, 128, 256)
    assert int(constants["kSmSideEntries"]) == 256


def test_binding_formats_no_message_through_iostreams():
    """Under torch 2.11's runtime, libstdc++'s stream and locale code crashed inside the binding (<regex>, then an
    integer inserted into a std::ostream). The binding builds messages with its own cat() (std::to_string) and hands
    TORCH_CHECK one argument after the condition, which c10 passes on without formatting."""
    code = re.sub(r"//[^\n]*", "", SOURCE)
    for banned in ("<regex>", "<sstream>", "<fstream>", "<iostream>", "ostringstream", "std::cout", "std::cerr"):
        assert banned not in code, banned
    for call in re.finditer(r"TORCH_CHECK(?:_VALUE|_TYPE)?\(", code):
        depth, i, top_commas, in_str = 1, call.end(), 0, False
        while depth:
            c = code[i]
            if in_str:
                in_str = not (c == '"' and code[i - 1] != "\\")
            elif c == '"':
                in_str = True
            elif c in "([{":
                depth += 1
            elif c in ")]}":
                depth -= 1
            elif c == "," and depth == 1:
                top_commas += 1
            i += 1
        assert top_commas <= 1, code[call.start():i]
