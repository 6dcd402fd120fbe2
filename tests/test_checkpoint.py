"""deepergemm.checkpoint: DeepSeek-V3-format block-FP8 safetensors shards into deepergemm.nn modules.

Each test writes a small synthetic checkpoint in that format (sharded, with its index and config.json), loads
it, and checks that every tensor lands where it belongs (experts stacked per expert), or that a mismatch is
refused with an error naming the tensor and the rule.
"""
import json
import sys

import pytest
import torch
from torch import nn

import deepergemm as dg
import deepergemm.nn as dnn
from deepergemm import checkpoint

safetensors_torch = pytest.importorskip("safetensors.torch")

FP8 = torch.float8_e4m3fn
H, Q_LORA, HEADS, NOPE, ROPE, V, KV_LORA = 256, 128, 2, 128, 64, 128, 128
DENSE, EXPERTS, TOP_K, INTER = 384, 4, 2, 128
CONFIG = {"architectures": ["DeepseekV3ForCausalLM"], "hidden_size": H,
          "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                  "weight_block_size": [128, 128]}}


# ----------------------------------------------------------------------------------------------
# a DeepSeek-V3-shaped model, two layers: a dense one and a MoE one
# ----------------------------------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, linear):
        super().__init__()
        self.q_a_proj = linear(H, Q_LORA)
        self.q_a_layernorm = nn.RMSNorm(Q_LORA, dtype=torch.bfloat16)
        self.q_b_proj = linear(Q_LORA, HEADS * (NOPE + ROPE))
        self.kv_a_proj_with_mqa = linear(H, KV_LORA + ROPE)
        self.kv_a_layernorm = nn.RMSNorm(KV_LORA, dtype=torch.bfloat16)
        self.kv_b_proj = linear(KV_LORA, HEADS * (NOPE + V))
        self.o_proj = linear(HEADS * V, H)


class DenseMLP(nn.Module):
    def __init__(self, linear, inter):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = linear(H, inter), linear(H, inter), linear(inter, H)


class Layer(nn.Module):
    def __init__(self, linear, moe: bool):
        super().__init__()
        self.self_attn = Attention(linear)
        self.input_layernorm = nn.RMSNorm(H, dtype=torch.bfloat16)
        self.post_attention_layernorm = nn.RMSNorm(H, dtype=torch.bfloat16)
        if moe:
            self.mlp = dnn.FP8MoE(H, INTER, EXPERTS, TOP_K, shared_intermediate_size=INTER, scoring="sigmoid",
                                  n_group=2, topk_group=1, routed_scaling_factor=2.5)
        else:
            self.mlp = DenseMLP(linear, DENSE)


class Model(nn.Module):
    """model.embed_tokens, model.layers.{0,1}, model.norm, lm_head: DeepSeek-V3's names."""

    def __init__(self, linear=lambda k, n: dnn.FP8Linear(k, n)):
        super().__init__()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(32, H, dtype=torch.bfloat16)
        self.model.layers = nn.ModuleList([Layer(linear, moe=False), Layer(linear, moe=True)])
        self.model.norm = nn.RMSNorm(H, dtype=torch.bfloat16)
        self.lm_head = nn.Linear(H, 32, bias=False, dtype=torch.bfloat16)  # not quantized in DeepSeek-V3


def _fp8(n, k):
    return dg.quantize_weight(torch.randn(n, k) * torch.empty(1).uniform_(0.1, 10))


def checkpoint_tensors(stacked_experts: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint, named as DeepSeek-V3's files name them (experts one by one), or with the
    experts stacked (E, N, K) under transformers' names."""
    t = {"model.embed_tokens.weight": torch.randn(32, H, dtype=torch.bfloat16),
         "model.norm.weight": torch.rand(H, dtype=torch.bfloat16), "lm_head.weight": torch.randn(32, H).bfloat16()}
    attn = {"q_a_proj": (Q_LORA, H), "q_b_proj": (HEADS * (NOPE + ROPE), Q_LORA),
            "kv_a_proj_with_mqa": (KV_LORA + ROPE, H), "kv_b_proj": (HEADS * (NOPE + V), KV_LORA),
            "o_proj": (H, HEADS * V)}
    for layer in range(2):
        p = f"model.layers.{layer}."
        for name, shape in attn.items():
            t[p + f"self_attn.{name}.weight"], t[p + f"self_attn.{name}.weight_scale_inv"] = _fp8(*shape)
        t[p + "self_attn.q_a_layernorm.weight"] = torch.rand(Q_LORA, dtype=torch.bfloat16)
        t[p + "self_attn.kv_a_layernorm.weight"] = torch.rand(KV_LORA, dtype=torch.bfloat16)
        t[p + "input_layernorm.weight"] = torch.rand(H, dtype=torch.bfloat16)
        t[p + "post_attention_layernorm.weight"] = torch.rand(H, dtype=torch.bfloat16)
    mlps = {"model.layers.0.mlp.": DENSE, "model.layers.1.mlp.shared_experts.": INTER}
    mlps.update({f"model.layers.1.mlp.experts.{e}.": INTER for e in range(EXPERTS)})
    for p, inter in mlps.items():
        for name, shape in (("gate_proj", (inter, H)), ("up_proj", (inter, H)), ("down_proj", (H, inter))):
            t[p + f"{name}.weight"], t[p + f"{name}.weight_scale_inv"] = _fp8(*shape)
    t["model.layers.1.mlp.gate.weight"] = torch.randn(EXPERTS, H, dtype=torch.bfloat16)
    t["model.layers.1.mlp.gate.e_score_correction_bias"] = torch.randn(EXPERTS)
    return stack_experts(t) if stacked_experts else t


def stack_experts(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    p = "model.layers.1.mlp.experts."
    out = {k: v for k, v in t.items() if not k.startswith(p)}
    for suffix in ("", "_scale_inv"):
        kind = "weight" + suffix
        out[p + "gate_up_proj" + suffix] = torch.stack(
            [torch.cat([t[f"{p}{e}.gate_proj.{kind}"], t[f"{p}{e}.up_proj.{kind}"]]) for e in range(EXPERTS)])
        out[p + "down_proj" + suffix] = torch.stack([t[f"{p}{e}.down_proj.{kind}"] for e in range(EXPERTS)])
    return out


def write_checkpoint(folder, tensors: dict[str, torch.Tensor], shards: int = 3, config=CONFIG, index=True):
    """DeepSeek's layout: model-0000i-of-0000n.safetensors shards, their index, config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    files = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    weight_map = {name: files[i % shards] for i, name in enumerate(names)}
    for file in files:
        part = {n: tensors[n].contiguous() for n in names if weight_map[n] == file}
        safetensors_torch.save_file(part, str(folder / file), metadata={"format": "pt"})
    if index:
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.view(torch.uint8), b.view(torch.uint8)) if a.dtype == FP8 else torch.equal(a, b)


def check_every_tensor_landed(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    experts = model.model.layers[1].mlp.experts
    p = "model.layers.1.mlp.experts."
    for name, value in tensors.items():
        if name in state:  # (non-FP8 tensors are cast to the model's dtype: the bf16 router weight to fp32)
            assert _same(state[name], value if value.dtype == FP8 else value.to(state[name].dtype)), name
            continue
        e, proj, kind = name[len(p):].split(".", 2)
        e = int(e)
        scale = kind == "weight_scale_inv"
        rows = INTER // 128 if scale else INTER
        stacked = {"gate_proj": (experts.gate_up_proj_scale_inv if scale else experts.gate_up_proj)[e, :rows],
                   "up_proj": (experts.gate_up_proj_scale_inv if scale else experts.gate_up_proj)[e, rows:],
                   "down_proj": (experts.down_proj_scale_inv if scale else experts.down_proj)[e]}[proj]
        assert _same(stacked, value), name


# ----------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("on_meta", [True, False])
def test_every_tensor_of_deepseek_shards_lands_where_it_belongs(tmp_path, on_meta):
    tensors = checkpoint_tensors()
    folder = write_checkpoint(tmp_path / "ckpt", tensors)
    if on_meta:
        with torch.device("meta"):
            model = Model()
    else:
        model = Model()
    report = checkpoint.load_fp8_checkpoint(model, folder)
    assert sorted(report.loaded) == sorted(tensors) and not report.missing and not report.unexpected
    assert len(report.files) == 3
    assert not any(t.is_meta for t in model.state_dict().values())
    check_every_tensor_landed(model, tensors)
    # the FP8 parameters keep requires_grad=False, and the model runs
    assert not any(p.requires_grad for n, p in model.named_parameters() if p.dtype == FP8 or "scale_inv" in n)
    x = torch.randn(5, H, dtype=torch.bfloat16)
    moe = model.model.layers[1].mlp
    y = moe(x)
    ids, weights = moe.gate(x)
    assert moe.gate.weight.dtype == torch.float32  # a bf16 router weight cast to the module's fp32
    assert y.shape == (5, H) and torch.equal(y, moe.experts(x, ids, weights) + moe.shared_experts(x))


def test_stacked_experts_single_file_and_file_lists(tmp_path):
    tensors = checkpoint_tensors(stacked_experts=True)
    folder = write_checkpoint(tmp_path / "stacked", tensors, shards=1, index=False)
    model = Model()
    report = checkpoint.load_fp8_checkpoint(model, folder / "model-00001-of-00001.safetensors")
    assert not report.missing and not report.unexpected
    assert all(_same(model.state_dict()[k], v if v.dtype == FP8 else v.to(model.state_dict()[k].dtype))
               for k, v in tensors.items())
    per_expert = checkpoint_tensors()
    folder2 = write_checkpoint(tmp_path / "list", per_expert, shards=2, index=False)
    model2 = Model()
    checkpoint.load_fp8_checkpoint(model2, sorted(folder2.glob("*.safetensors")))
    check_every_tensor_landed(model2, per_expert)
    # per-expert tensors stacked by the loader are what transformers' stacked layout holds
    stacked, state = stack_experts(per_expert), model2.state_dict()
    names = [k for k in stacked if k.startswith("model.layers.1.mlp.experts.")]
    assert len(names) == 4 and all(_same(state[k], stacked[k]) for k in names)


def test_a_model_of_nn_linear_converted_without_quantizing_then_loaded(tmp_path):
    """The transformers route: the model's own nn.Linear layers, convert(quantize=False), then the checkpoint."""
    tensors = checkpoint_tensors()
    folder = write_checkpoint(tmp_path / "ckpt", tensors)
    with torch.device("meta"):
        model = Model(linear=lambda k, n: nn.Linear(k, n, bias=False, dtype=torch.bfloat16))
    skipped = dnn.convert(model, skip=["lm_head"], quantize=False)
    assert skipped == [("lm_head", "in skip")]
    report = checkpoint.load_fp8_checkpoint(model, folder, device="cpu")
    assert not report.missing and not report.unexpected
    check_every_tensor_landed(model, tensors)
    layer = model.model.layers[0].self_attn.q_a_proj
    x = torch.randn(3, H, dtype=torch.bfloat16)
    assert torch.equal(layer(x), dg.linear(x, tensors["model.layers.0.self_attn.q_a_proj.weight"],
                                           tensors["model.layers.0.self_attn.q_a_proj.weight_scale_inv"]))


def test_strict_lists_missing_and_unexpected_tensors(tmp_path):
    tensors = checkpoint_tensors()
    del tensors["model.layers.0.self_attn.o_proj.weight_scale_inv"]
    del tensors["model.layers.1.mlp.experts.3.up_proj.weight"]
    tensors["model.layers.61.eh_proj.weight"] = torch.randn(8, H)  # DeepSeek's MTP layer: not in this model
    tensors["model.layers.1.mlp.experts.9.up_proj.weight"] = tensors["model.layers.1.mlp.experts.0.up_proj.weight"]
    folder = write_checkpoint(tmp_path / "ckpt", tensors)
    with pytest.raises(ValueError, match=r"does not match the model: 2 model tensors missing \(model.layers.0.self_attn"
                                         r".o_proj.weight_scale_inv, model.layers.1.mlp.experts.gate_up_proj\), 2 "
                                         r"checkpoint tensors unexpected.*strict=False"):
        checkpoint.load_fp8_checkpoint(Model(), folder)
    report = checkpoint.load_fp8_checkpoint(Model(), folder, strict=False)
    assert report.missing == ["model.layers.0.self_attn.o_proj.weight_scale_inv",
                              "model.layers.1.mlp.experts.gate_up_proj"]
    assert sorted(report.unexpected) == ["model.layers.1.mlp.experts.9.up_proj.weight",
                                         "model.layers.61.eh_proj.weight"]
    assert "2 model tensors missing" in str(report)


@pytest.mark.parametrize("change,error,match", [
    (lambda t: t.update({"model.layers.0.self_attn.q_a_proj.weight": torch.randn(Q_LORA, H, dtype=torch.bfloat16)}),
     TypeError, r"model.layers.0.self_attn.q_a_proj.weight must be float8_e4m3fn .*got torch.bfloat16"),
    (lambda t: t.update({"model.layers.0.self_attn.q_a_proj.weight_scale_inv": torch.ones(2, 4)}),
     ValueError, r"q_a_proj.weight_scale_inv must have shape \(1, 2\) \(128x128 blocks of a 128x256 weight\), got "
                 r"\(2, 4\).*another block size"),
    (lambda t: t.update({"model.layers.0.mlp.down_proj.weight_scale_inv": torch.ones(2, 3, dtype=torch.bfloat16)}),
     TypeError, r"model.layers.0.mlp.down_proj.weight_scale_inv must be float32"),
    (lambda t: t.update({"model.layers.1.mlp.experts.2.gate_proj.weight": torch.zeros(INTER, H, dtype=torch.float16)}),
     TypeError, r"experts.2.gate_proj.weight must be float8_e4m3fn"),
    (lambda t: t.update({"model.layers.1.mlp.experts.1.down_proj.weight_scale_inv": torch.ones(4, 2)}),
     ValueError, r"experts.1.down_proj.weight_scale_inv must have shape \(2, 1\)"),
    (lambda t: t.update({"lm_head.weight": torch.zeros(32, H, dtype=FP8)}),
     TypeError, r"lm_head.weight is float8_e4m3fn in the checkpoint but lm_head.weight is torch.bfloat16 in the model: "
                r"make that layer an FP8 module first"),
    (lambda t: t.update({"model.norm.weight": torch.ones(H + 1)}), ValueError, r"model.norm.weight has shape \(257,\)"),
])
def test_mismatched_tensors_are_refused(tmp_path, change, error, match):
    tensors = checkpoint_tensors()
    change(tensors)
    folder = write_checkpoint(tmp_path / "ckpt", tensors)
    with pytest.raises(error, match=match):
        checkpoint.load_fp8_checkpoint(Model(), folder)


@pytest.mark.parametrize("quant,match", [
    ({"weight_block_size": [64, 64]}, r"weight_block_size must be \[128, 128\].*got \[64, 64\]"),
    ({"fmt": "e5m2"}, "fmt must be 'e4m3'"),
    ({"activation_scheme": "static"}, "activation_scheme must be 'dynamic'"),
    ({"quant_method": "fbgemm_fp8"}, "quant_method must be 'fp8'"),
    ({"weight_block_size": None}, "no weight_block_size: a per-tensor FP8 checkpoint"),
])
def test_a_config_of_another_format_is_refused(tmp_path, quant, match):
    config = {**CONFIG, "quantization_config": {**CONFIG["quantization_config"], **quant}}
    if quant.get("weight_block_size", 1) is None:
        del config["quantization_config"]["weight_block_size"]
    folder = write_checkpoint(tmp_path / "ckpt", {"model.norm.weight": torch.ones(H)}, shards=1, config=config)
    with pytest.raises(ValueError, match=match):
        checkpoint.load_fp8_checkpoint(Model(), folder, strict=False)
    checkpoint.load_fp8_checkpoint(Model(), folder, strict=False, check_config=False)  # (the caller's call)


def test_files_and_the_safetensors_package(tmp_path, monkeypatch):
    tensors = {"model.norm.weight": torch.ones(H), "lm_head.weight": torch.ones(32, H)}
    folder = write_checkpoint(tmp_path / "ckpt", tensors, shards=2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors does not exist"):
        checkpoint.load_fp8_checkpoint(Model(), folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \*.safetensors files"):
        checkpoint.load_fp8_checkpoint(Model(), tmp_path / "empty")
    monkeypatch.setitem(sys.modules, "safetensors", None)
    with pytest.raises(ImportError, match="pip install safetensors"):
        checkpoint.load_fp8_checkpoint(Model(), folder)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        checkpoint.load_fp8_checkpoint({}, folder)


def test_nn_reexports_the_loader(tmp_path):
    tensors = checkpoint_tensors()
    folder = write_checkpoint(tmp_path / "ckpt", tensors, shards=2)
    model = Model()
    assert not dnn.load_fp8_checkpoint(model, folder).missing
    check_every_tensor_landed(model, tensors)
