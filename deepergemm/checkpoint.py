"""Load DeepSeek-V3-format block-FP8 checkpoints (safetensors shards) into deepergemm.nn modules.

    model = MyDeepSeek(config)                                  # FP8Linear / FP8MoE where the checkpoint is FP8
    report = load_fp8_checkpoint(model, "path/to/DeepSeek-V3", device="cuda")

The format (what DeepSeek-V3 and R1 ship, and what transformers, vLLM and SGLang read):
* ``config.json``'s ``quantization_config``: {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme":
  "dynamic", "weight_block_size": [128, 128]} (checked when the folder has one; other values are refused).
* ``model.safetensors.index.json``'s ``weight_map`` (tensor name -> shard file), or else every ``*.safetensors``
  of the folder; a single ``.safetensors`` file or a list of them also works.
* An FP8 layer ``<name>`` as ``<name>.weight`` (N, K) float8_e4m3fn and ``<name>.weight_scale_inv``
  (ceil(N/128), ceil(K/128)) float32; MoE experts one by one, ``<moe>.experts.<e>.{gate,up,down}_proj.weight`` and
  ``.weight_scale_inv`` (DeepSeek's files), or stacked (E, N, K) as ``<moe>.experts.gate_up_proj``,
  ``down_proj`` and their ``_scale_inv`` (transformers' layout, FP8Experts' own names).

Where each tensor lands: a name that is a parameter or persistent buffer of the model goes there (FP8 weights and
their scales must match the model's dtype and shape exactly; other floating-point tensors, e.g. bf16 norms, are
cast to the model's dtype as load_state_dict does). Expert e's tensors of an FP8Experts module named
``<moe>.experts`` go to row block e of its stacked tensors: gate_proj to rows [0, I) of gate_up_proj, up_proj to
rows [I, 2I), down_proj to down_proj[e], each scale grid likewise. Meta-device tensors (a model built under
``torch.device("meta")``) are allocated on ``device`` as they are filled. Nothing is quantized or converted here:
a bf16 tensor for an FP8 weight, bf16 scales, or scales of another block size raise TypeError/ValueError naming
the tensor.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .reference import FP8_DTYPE

__all__ = ["LoadReport", "QUANTIZATION_CONFIG", "check_quantization_config", "checkpoint_files",
           "load_fp8_checkpoint"]

QUANTIZATION_CONFIG = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                       "weight_block_size": [128, 128]}
INDEX_FILE = "model.safetensors.index.json"
_EXPERT_KEY = re.compile(r"^(?P<module>.+)\.(?P<expert>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)\."
                         r"(?P<kind>weight|weight_scale_inv)$")
_SCALE_SUFFIX = "_scale_inv"


@dataclass
class LoadReport:
    """What load_fp8_checkpoint did: checkpoint tensors placed, model tensors left unfilled, checkpoint tensors
    with no place in the model, and the files read."""
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"{len(self.loaded)} tensors loaded from {len(self.files)} files; {len(self.missing)} model tensors "
                f"missing{_listing(self.missing)}; {len(self.unexpected)} checkpoint tensors unexpected"
                f"{_listing(self.unexpected)}")


def _listing(names: list[str], limit: int = 8) -> str:
    if not names:
        return ""
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return " (" + ", ".join(names[:limit]) + more + ")"


def check_quantization_config(config: dict) -> None:
    """Refuse a quantization_config (the dict, or a config.json dict holding one) this library cannot run."""
    quant = config.get("quantization_config", config)
    if not isinstance(quant, dict):
        raise ValueError(f"quantization_config must be a dict, got {type(quant).__name__}")
    method = quant.get("quant_method")
    if method != "fp8":
        raise ValueError(f"quantization_config.quant_method must be 'fp8' (block-FP8), got {method!r}")
    if quant.get("fmt", "e4m3") != "e4m3":
        raise ValueError(f"quantization_config.fmt must be 'e4m3' (float8_e4m3fn weights), got {quant['fmt']!r}")
    if quant.get("activation_scheme", "dynamic") != "dynamic":
        raise ValueError("quantization_config.activation_scheme must be 'dynamic' (activations quantized per 1x128 "
                         f"group on the fly), got {quant['activation_scheme']!r}")
    block = quant.get("weight_block_size")
    if block is None:
        raise ValueError("quantization_config has no weight_block_size: a per-tensor FP8 checkpoint, not block-FP8 "
                         "(deepergemm needs weight_block_size [128, 128])")
    if list(block) != [128, 128]:
        raise ValueError(f"quantization_config.weight_block_size must be [128, 128] (deepergemm's weight blocks), "
                         f"got {list(block)}")


def checkpoint_files(path) -> list[Path]:
    """The safetensors files of a checkpoint: path a folder (its index's shards, else every *.safetensors in it),
    a .safetensors file, or a list of files."""
    if isinstance(path, (list, tuple)):
        files = [Path(p) for p in path]
    else:
        path = Path(path)
        if path.is_dir():
            index = path / INDEX_FILE
            if index.exists():
                weight_map = json.loads(index.read_text()).get("weight_map")
                if not isinstance(weight_map, dict):
                    raise ValueError(f"{index} has no weight_map (tensor name -> shard file)")
                files = [path / name for name in sorted(set(weight_map.values()))]
            else:
                files = sorted(path.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"no *.safetensors files in {path}")
        else:
            files = [path]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"checkpoint file {f} does not exist")
    return files


def _safe_open():
    try:
        from safetensors import safe_open
    except ImportError as exc:
        raise ImportError("loading checkpoints needs the safetensors package: pip install safetensors") from exc
    return safe_open


# ----------------------------------------------------------------------------------------------
# where tensors go
# ----------------------------------------------------------------------------------------------
class _Model:
    """The model's tensors by name, allocated on `device` when they are on the meta device."""

    def __init__(self, model: nn.Module, device):
        from .nn import FP8Experts

        self.model, self.device = model, device
        self.tensors = dict(model.state_dict(keep_vars=True))  # parameters and persistent buffers
        self.experts = {name: m for name, m in model.named_modules() if isinstance(m, FP8Experts)}
        self.filled: set[str] = set()
        self.expert_parts: dict[str, set[tuple[int, str, str]]] = {name: set() for name in self.experts}

    def tensor(self, name: str) -> torch.Tensor:
        t = self.tensors[name]
        if t.device.type != "meta":
            return t
        owner_name, _, attr = name.rpartition(".")
        owner = self.model.get_submodule(owner_name)
        new = torch.zeros(t.shape, dtype=t.dtype, device=self.device or "cpu")  # (experts not in the file: zeros)
        if isinstance(t, nn.Parameter):
            setattr(owner, attr, nn.Parameter(new, requires_grad=t.requires_grad))
        else:
            owner.register_buffer(attr, new)
        self.tensors[name] = getattr(owner, attr)
        return self.tensors[name]

    def missing(self) -> list[str]:
        out = []
        for name in self.tensors:
            if name in self.filled:
                continue
            module = name.rpartition(".")[0]
            experts = self.experts.get(module)
            if experts is not None and self._stacked_by_experts(name, experts):
                continue
            out.append(name)
        return out

    def _stacked_by_experts(self, name: str, experts) -> bool:
        """Whether every expert's part of this stacked tensor came from per-expert tensors."""
        attr = name.rpartition(".")[2]
        kind = "weight_scale_inv" if attr.endswith(_SCALE_SUFFIX) else "weight"
        projs = ("gate_proj", "up_proj") if attr.startswith("gate_up_proj") else ("down_proj",)
        parts = self.expert_parts[name.rpartition(".")[0]]
        return all((e, p, kind) in parts for e in range(experts.num_experts) for p in projs)


def _is_scale(name: str) -> bool:
    return name.endswith(_SCALE_SUFFIX)


def _weight_of_scale(name: str) -> str:
    return name[:-len(_SCALE_SUFFIX)]  # weight_scale_inv -> weight, gate_up_proj_scale_inv -> gate_up_proj


def _check_direct(key: str, value: torch.Tensor, target_name: str, target: torch.Tensor,
                  tensors: dict[str, torch.Tensor]) -> None:
    from .nn import check_fp8_pair

    if target.dtype == FP8_DTYPE:
        check_fp8_pair(key, value, key + "[scale]", None, tuple(target.shape))
        return
    weight_name = _weight_of_scale(target_name) if _is_scale(target_name) else None
    weight = tensors.get(weight_name) if weight_name else None
    if weight is not None and weight.dtype == FP8_DTYPE:
        check_fp8_pair(key[:-len(_SCALE_SUFFIX)], None, key, value, tuple(weight.shape))
        return
    if value.dtype == FP8_DTYPE:
        raise TypeError(f"{key} is float8_e4m3fn in the checkpoint but {target_name} is {target.dtype} in the model: "
                        "make that layer an FP8 module first (deepergemm.nn.convert(model, quantize=False), or "
                        "FP8Linear / FP8Experts in the model's definition)")
    if value.is_floating_point() != target.is_floating_point() or (
            not value.is_floating_point() and value.dtype != target.dtype):
        raise TypeError(f"{key} is {value.dtype} in the checkpoint but {target_name} is {target.dtype} in the model")
    if tuple(value.shape) != tuple(target.shape):
        raise ValueError(f"{key} has shape {tuple(value.shape)} in the checkpoint but {target_name} has shape "
                         f"{tuple(target.shape)} in the model")


def _expert_slice(model: _Model, module: str, expert: int, proj: str, kind: str) -> tuple[str, tuple]:
    """(stacked tensor name, index) where expert `expert`'s `proj` `kind` tensor goes."""
    experts = model.experts[module]
    inter = experts.intermediate_size
    rows = inter if kind == "weight" else -(-inter // 128)
    stacked = ("gate_up_proj" if proj != "down_proj" else "down_proj") + ("" if kind == "weight" else _SCALE_SUFFIX)
    if proj == "gate_proj":
        index = (expert, slice(0, rows))
    elif proj == "up_proj":
        index = (expert, slice(rows, 2 * rows))
    else:
        index = (expert,)
    return f"{module}.{stacked}", index


def _place_expert(model: _Model, key: str, match: re.Match, value: torch.Tensor) -> bool:
    """Put a per-expert tensor into its FP8Experts module; False when it has none (unexpected)."""
    from .nn import check_fp8_pair

    module, proj, kind = match["module"], match["proj"], match["kind"]
    experts = model.experts.get(module)
    expert = int(match["expert"])
    if experts is None or expert >= experts.num_experts:
        return False
    h, i = experts.hidden_size, experts.intermediate_size
    shape = (h, i) if proj == "down_proj" else (i, h)
    base = key[:-len(kind)]
    if kind == "weight":
        check_fp8_pair(key, value, base + "weight_scale_inv", None, shape)
    else:
        check_fp8_pair(base + "weight", None, key, value, shape)
    name, index = _expert_slice(model, module, expert, proj, kind)
    with torch.no_grad():
        model.tensor(name)[index].copy_(value)
    model.expert_parts[module].add((expert, proj, kind))
    return True


# ----------------------------------------------------------------------------------------------
# load
# ----------------------------------------------------------------------------------------------
def load_fp8_checkpoint(model: nn.Module, path, *, strict: bool = True, device=None,
                        check_config: bool = True) -> LoadReport:
    """Fill model from block-FP8 safetensors shards (see the module's docstring); return a LoadReport.

    strict=True raises ValueError when a model tensor was not filled or a checkpoint tensor has no place (both
    listed); strict=False only reports them. device: where tensors still on the meta device are allocated (default
    CPU); the others stay where they are. check_config: check the folder's config.json, when it has one."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {strict!r}")
    safe_open = _safe_open()
    files = checkpoint_files(path)
    if check_config and not isinstance(path, (list, tuple)) and Path(path).is_dir():
        config = Path(path) / "config.json"
        if config.exists():
            settings = json.loads(config.read_text())
            if "quantization_config" in settings:
                check_quantization_config(settings)
    target = _Model(model, device)
    report = LoadReport(files=[str(f) for f in files])
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as reader:
            for key in reader.keys():
                if _load_one(target, key, reader):
                    report.loaded.append(key)
                else:
                    report.unexpected.append(key)
    report.missing = target.missing()
    if strict and (report.missing or report.unexpected):
        raise ValueError(f"checkpoint {path} does not match the model: {len(report.missing)} model tensors missing"
                         f"{_listing(report.missing)}, {len(report.unexpected)} checkpoint tensors unexpected"
                         f"{_listing(report.unexpected)}; pass strict=False to load the rest")
    return report


def _load_one(model: _Model, key: str, reader) -> bool:
    if key in model.tensors:
        value = reader.get_tensor(key)
        _check_direct(key, value, key, model.tensors[key], model.tensors)
        with torch.no_grad():
            model.tensor(key).copy_(value)
        model.filled.add(key)
        return True
    match = _EXPERT_KEY.match(key)
    if match is None or match["module"] not in model.experts:
        return False
    return _place_expert(model, key, match, reader.get_tensor(key))
