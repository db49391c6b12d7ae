"""attnviz.mixing against independent computations written here (docs/mixing.md defines them):

- attention_norm (the value norms and the per-layer matrix): the value projection's own output,
  caught by a hook, carried through each head's slice of the output projection by hand;
- value_zeroing: the whole model run again with a hook that zeroes one token's value vectors in
  one layer, and a hook on that layer's own output;
- alti: the paper's formulas on vectors caught by hooks (the layer's input, its value
  projection's output, the norms' inputs and outputs), written out here;
- globenc: its formula likewise, on post-norm models; refused with one line on pre-norm ones;

on minilm-l6 and smollm2-135m and on tiny random checkpoints of many architectures
(tests/arch_zoo.py). The attention weights are the capture's (attnviz.capture), as the
definitions say. Tolerances: 2e-3, absolute on the row-normalised matrices and relative to the
largest value norm.
"""
from __future__ import annotations

import importlib
import json
import operator
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import arch_zoo  # noqa: E402
from conftest import ROOT  # noqa: E402

import attnviz  # noqa: E402
from attnviz.errors import AttnvizError  # noqa: E402
from attnviz.mixing import Cancelled  # noqa: E402
from attnviz.pixels import image_pixels, square_pixels  # noqa: E402
from attnviz.recording import accepts  # noqa: E402

mixing_module = importlib.import_module("attnviz.mixing")  # attnviz.mixing is the function
TEXT = "The cat sat on the mat, and it was good."
TOLERANCE = 2e-3


@dataclass(frozen=True)
class Ref:
    """Where the test finds what it hooks, from the module it runs: the layers, and in a layer
    the value projection, the output projection, and the norm whose input is the residual
    stream after attention (pre-norm: the feed-forward block's norm; post-norm: the first
    norm, whose output is the attention block's); post-norm: the second norm. fused: queries,
    keys and values in one projection, values last; scale: the attention branch's layer scale."""

    layers: str
    value: str
    out: str
    after: str
    second: str | None = None
    fused: bool = False
    scale: str | None = None


BERT = Ref("encoder.layer", "attention.self.value", "attention.output.dense", "attention.output.LayerNorm",
           "output.LayerNorm")
LLAMA = Ref("model.layers", "self_attn.v_proj", "self_attn.o_proj", "post_attention_layernorm")
PRE_SEQ2SEQ = Ref("layers", "self_attn.v_proj", "self_attn.out_proj", "final_layer_norm")
VISION = Ref("encoder.layers", "self_attn.v_proj", "self_attn.out_proj", "layer_norm2")
REFS = {
    "bert": BERT, "roberta": BERT, "xlm-roberta": BERT, "electra": BERT, "minilm-l6": BERT,
    "distilbert": Ref("transformer.layer", "attention.v_lin", "attention.out_lin", "sa_layer_norm", "output_layer_norm"),
    "llama": LLAMA, "mistral": LLAMA, "qwen2": LLAMA, "qwen3": LLAMA, "gemma": LLAMA, "smollm2-135m": LLAMA,
    "gpt2": Ref("transformer.h", "attn.c_attn", "attn.c_proj", "ln_2", fused=True),
    "gpt2-bare": Ref("h", "attn.c_attn", "attn.c_proj", "ln_2", fused=True),
    "t5": Ref("block", "layer.0.SelfAttention.v", "layer.0.SelfAttention.o", "layer.1.layer_norm"),
    "mbart": PRE_SEQ2SEQ, "pegasus": PRE_SEQ2SEQ,
    "bart": Ref("layers", "self_attn.v_proj", "self_attn.out_proj", "self_attn_layer_norm", "final_layer_norm"),
    "marian": Ref("layers", "self_attn.v_proj", "self_attn.out_proj", "self_attn_layer_norm", "final_layer_norm"),
    "vit": Ref("layers", "attention.v_proj", "attention.o_proj", "layernorm_after"),
    "deit": Ref("layers", "attention.v_proj", "attention.o_proj", "layernorm_after"),
    "dinov2": Ref("encoder.layer", "attention.v_proj", "attention.o_proj", "norm2", scale="layer_scale1.lambda1"),
    "dinov2-registers": Ref("encoder.layer", "attention.v_proj", "attention.o_proj", "norm2",
                            scale="layer_scale1.lambda1"),
    "clip-vision": VISION, "siglip-vision": VISION, "clip": VISION, "custom": Ref("blocks", "attn.qkv", "attn.out", "norm2", fused=True),
}
TINY = ["bert", "roberta", "xlm-roberta", "distilbert", "electra", "gpt2", "gpt2-bare", "llama", "mistral", "qwen2",
        "qwen3", "gemma", "t5", "bart", "mbart", "pegasus", "marian", "vit", "deit", "dinov2", "dinov2-registers",
        "clip-vision", "siglip-vision", "clip"]
NOT_COVERED = ["albert", "deberta-v2", "modernbert", "gpt-neox", "opt", "gemma2", "phi3", "falcon", "beit", "swin"]


def spread_vectors(net: torch.nn.Module, seed: int = 0) -> None:
    """Redraw every vector parameter away from its initial value (biases 0, norm weights and
    layer scales 1), so that a formula that leaves out a bias, a norm's weight or the layer
    scale is caught: biases N(0, 0.3^2), the others 1 + N(0, 0.3^2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(net.named_parameters()):
            if p.dim() == 1:
                noise = torch.randn(p.shape, generator=g) * 0.3
                p.copy_(noise if name.endswith("bias") else 1 + noise)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """``zoo(name)`` -> attnviz Model of a tiny checkpoint (arch_zoo's, its vectors spread),
    built, saved and loaded once."""
    root, tokenizers, built = tmp_path_factory.mktemp("mixing-zoo"), {}, {}

    def get(name: str):
        if name not in built:
            model = attnviz.load_model(str(arch_zoo.save(arch_zoo.BY_NAME[name], root / name, tokenizers)))
            spread_vectors(model.net)
            built[name] = model
        return built[name]
    return get


@pytest.fixture(scope="module")
def picture():
    y, x = np.mgrid[0:40, 0:60]
    return Image.fromarray(np.stack([x * 4, y * 6, (x + y) * 2], axis=-1).clip(0, 255).astype(np.uint8))


WORDS = ["[PAD]", "[UNK]", "[CLS]", "a", "b", "c", "d", "e"]


def custom_model(kind: str):
    """attnviz's own models: the Build-your-own transformer, a transformer text classifier, the ViT."""
    from attnviz.lab.classify import Classifier, ClassifierConfig
    from attnviz.lab.custom import CustomConfig, CustomNet, as_model

    if kind == "toy":
        return as_model(CustomNet(CustomConfig(task="reverse", length=12, d_model=32, n_heads=4, n_layers=2)), kind)
    if kind == "classifier":
        config = ClassifierConfig(arch="transformer", task="csv", n_classes=2, length=8, vocab_size=8, d_model=16)
        return as_model(Classifier(config, vocab=WORDS, seed=1), kind)
    return as_model(Classifier(ClassifierConfig(arch="vit", task="images", n_classes=2, length=16, d_model=16),
                               seed=2), kind)


# -- running the model, independently of attnviz.mixing -------------------------------------
def runner(model, input):
    """(module the test runs, a function of the batch size that runs it on the input repeated)."""
    if model.family == "custom":
        x = square_pixels(model, input)[0] if model.image else torch.tensor([model.tokenizer.encode(input).ids])
        return model.net, lambda b: model.net(x.repeat(b, *[1] * (x.dim() - 1)))
    if isinstance(input, Image.Image):
        pixels, _ = image_pixels(model, input, None)
        tower = model.vision_tower
        extra = {"interpolate_pos_encoding": True} if accepts(tower, "interpolate_pos_encoding") else {}
        where = getattr(tower, "vision_model", tower)  # CLIP and SigLIP: the layers are one module down
        return where, lambda b: tower(pixel_values=pixels.repeat(b, 1, 1, 1), **extra)
    ids = model.tokenizer(input, return_tensors="pt")["input_ids"]
    if model.family == "encoder-decoder":
        encoder = model.net.get_encoder()
        return encoder, lambda b: encoder(input_ids=ids.repeat(b, 1))
    kwargs = {"use_cache": False} if model.family == "decoder" else {}
    return model.net, lambda b: model.net(input_ids=ids.repeat(b, 1), **kwargs)


class Stop(Exception):
    """Raised by a hook once it has what it came for: the layers above need not run."""


def caught(module, run, pre: bool = False, stop: bool = False):
    """The first input (``pre``) or output of ``module`` in one run of ``run``, batch item 0."""
    got = []

    def keep(m, args, kwargs, out=None):
        value = (args[0] if args else kwargs["hidden_states"]) if pre else (out[0] if isinstance(out, tuple) else out)
        got.append(value.detach().float())
        if stop:
            raise Stop

    handle = (module.register_forward_pre_hook(keep, with_kwargs=True) if pre
              else module.register_forward_hook(lambda m, a, k, o: keep(m, a, k, o), with_kwargs=True))
    try:
        with torch.no_grad():
            run()
    except Stop:
        pass
    finally:
        handle.remove()
    return got[0]


def head_vectors(ref: Ref, layer, v: torch.Tensor, heads: int) -> torch.Tensor:
    """f^h(x_j) [H, N, d] from the value projection's output v [N, width]: each head's value
    (its key/value group's) through its slice of the output projection, times the layer scale."""
    if ref.fused:
        v = v[:, 2 * v.shape[1] // 3:]
    out = operator.attrgetter(ref.out)(layer)
    w = out.weight.detach().float()
    w = w if type(out).__name__ == "Conv1D" else w.T  # [H * dh, d]
    dh = w.shape[0] // heads
    groups = v.shape[1] // dh
    f = torch.stack([v[:, (h // (heads // groups)) * dh:(h // (heads // groups) + 1) * dh] @ w[h * dh:(h + 1) * dh]
                     for h in range(heads)])
    if ref.scale:
        f = f * operator.attrgetter(ref.scale)(layer).detach().float()
    return f


@dataclass
class Reference:
    """What the test computes for one layer by hand."""

    value_norms: np.ndarray
    attention_norm: np.ndarray
    alti: np.ndarray
    alti_heads: np.ndarray
    globenc: np.ndarray | None


def rownorm(m: torch.Tensor) -> torch.Tensor:
    s = m.sum(-1, keepdim=True)
    return torch.where(s > 0, m / s, torch.zeros_like(m))


def l1_contribution(whole: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """ALTI: max(0, |y|_1 - |y - part|_1) over the last axis."""
    return (whole.abs().sum(-1) - (whole - part).abs().sum(-1)).clamp(min=0)


def reference_layer(name: str, model, input, index: int, alpha: torch.Tensor) -> Reference:
    """The definitions of docs/mixing.md for layer ``index``, from hooks and the capture's
    attention ``alpha`` [H, N, N]."""
    ref = REFS[name]
    where, run = runner(model, input)
    layer = operator.attrgetter(ref.layers)(where)[index]
    after = operator.attrgetter(ref.after)(layer)
    heads = alpha.shape[0]
    h = caught(layer, lambda: run(1), pre=True)[0]
    v = caught(operator.attrgetter(ref.value)(layer), lambda: run(1))[0]
    f = head_vectors(ref, layer, v, heads)  # [H, N, d]
    per_head = alpha[..., None] * f[:, None]  # [H, N(i), N(j), d]: alpha^h_ij f^h(x_j)
    mixed = per_head.sum(0)
    if ref.second is None:  # pre-norm (Ferrando & Voita): the parts are alpha f per head and token, and h
        whole = caught(after, lambda: run(1), pre=True)[0]  # the residual stream after attention
        c_heads = l1_contribution(whole[None, :, None], per_head)  # [H, N, N]
        c_res = l1_contribution(whole, h)  # [N]
        total = c_heads.sum((0, 2)) + c_res
        alti_heads = c_heads / total[None, :, None]
        alti = alti_heads.sum(0) + torch.diag(c_res / total)
        globenc = None
    else:  # post-norm (Ferrando et al. 2022): h joins token i's vector; the first norm split over the sum
        second = operator.attrgetter(ref.second)(layer)
        pre1, y = caught(after, lambda: run(1), pre=True)[0], caught(after, lambda: run(1))[0]
        pre2 = caught(second, lambda: run(1), pre=True)[0]
        gamma1, gamma2 = after.weight.detach(), second.weight.detach()
        std1 = torch.sqrt(pre1.var(-1, unbiased=False) + after.eps)
        std2 = torch.sqrt(pre2.var(-1, unbiased=False) + second.eps)
        z = mixed + torch.eye(len(h))[..., None] * h[:, None]  # [N(i), N(j), d]
        t1 = gamma1 * (z - z.mean(-1, keepdim=True)) / std1[:, None, None]
        alti = rownorm(l1_contribution(y[:, None], t1))
        heads_t = gamma1 * (per_head - per_head.mean(-1, keepdim=True)) / std1[None, :, None, None]
        res_t = gamma1 * (h - h.mean(-1, keepdim=True)) / std1[:, None]
        c_heads, c_res = l1_contribution(y[None, :, None], heads_t), l1_contribution(y, res_t)
        alti_heads = c_heads / (c_heads.sum((0, 2)) + c_res)[None, :, None]
        t2 = gamma2 * (t1 - t1.mean(-1, keepdim=True)) / std2[:, None, None]
        globenc = rownorm(t2.norm(dim=-1)).numpy()
    return Reference(value_norms=f.norm(dim=-1).numpy(), attention_norm=rownorm(mixed.norm(dim=-1)).numpy(),
                     alti=alti.numpy(), alti_heads=alti_heads.numpy(), globenc=globenc)


def reference_value_zeroing(name: str, model, input, index: int, causal: bool) -> np.ndarray:
    """1 - cos(y_i, y_i^(not j)) of layer ``index``: the whole model run on N copies of the
    input, copy j with token j's value vectors zeroed in that layer (a hook on its value
    projection), the layer's own output caught by a hook; clipped, masked, rows normalised."""
    ref = REFS[name]
    where, run = runner(model, input)
    layer = operator.attrgetter(ref.layers)(where)[index]
    value = operator.attrgetter(ref.value)(layer)
    y = caught(layer, lambda: run(1), stop=True)[0].double()
    n = y.shape[0]

    def zero(module, args, out):
        out = out.clone()
        values = slice(2 * out.shape[-1] // 3, None) if ref.fused else slice(None)
        for j in range(n):
            out[j, j, values] = 0
        return out

    handle = value.register_forward_hook(zero)
    try:
        zeroed = caught(layer, lambda: run(n), stop=True).double()  # [copy j, token i, d]
    finally:
        handle.remove()
    d = (1 - torch.nn.functional.cosine_similarity(zeroed, y[None], dim=-1)).T.clamp(min=0)  # [i, j]
    return rownorm(torch.tril(d) if causal else d).numpy()


def assert_close(got: np.ndarray, expected: np.ndarray, what: str, relative: bool = False) -> None:
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    error = np.abs(got - expected).max() / (np.abs(expected).max() if relative else 1.0)
    assert error < TOLERANCE, f"{what}: off by {error:.2e}"


def check_against_references(name: str, model, input, layers=None, methods=("attention_norm", "alti", "globenc",
                                                                             "value_zeroing")):
    """mixing() of ``model`` on ``input`` equals the references on ``layers`` (default: all)."""
    result = attnviz.capture(model, input)
    mixed = attnviz.mixing(model, input, methods=methods, result=result)
    stack = result.stacks[0]
    heads = mixed.value_norms.shape[1]
    assert mixed.tokens == result.key_tokens(stack) and mixed.digest == result.digest
    for m, a in mixed.matrices.items():
        assert a.dtype == np.float32 and a.shape == (len(mixed.value_norms), len(mixed.tokens), len(mixed.tokens))
        np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5, err_msg=m)
    for index in layers if layers is not None else range(len(mixed.value_norms)):
        alpha = torch.from_numpy(np.stack([result.attention(index, h, stack) for h in range(heads)]))
        ref = reference_layer(name, model, input, index, alpha)
        where = f"{name} layer {index}"
        assert_close(mixed.value_norms[index], ref.value_norms, f"{where} value norms", relative=True)
        assert_close(mixed.matrices["attention_norm"][index], ref.attention_norm, f"{where} attention_norm")
        assert_close(mixed.matrices["alti"][index], ref.alti, f"{where} alti")
        assert_close(mixed.alti_heads[index], ref.alti_heads, f"{where} alti_heads")
        if ref.globenc is not None:
            assert_close(mixed.matrices["globenc"][index], ref.globenc, f"{where} globenc")
        if "value_zeroing" in methods:
            expected = reference_value_zeroing(name, model, input, index, mixed.causal)
            assert_close(mixed.matrices["value_zeroing"][index], expected, f"{where} value_zeroing")
    return mixed


def test_minilm_matches_the_definitions(minilm):
    mixed = check_against_references("minilm-l6", minilm, TEXT)
    assert set(mixed.matrices) == {"attention", "attention_norm", "alti", "globenc", "value_zeroing"}
    assert not mixed.causal and mixed.skipped == {}


def test_smollm_matches_the_definitions(smollm):
    mixed = check_against_references("smollm2-135m", smollm, TEXT, layers=[0, 14, 29])
    assert mixed.causal and not np.triu(mixed.matrices["value_zeroing"], k=1).any()
    assert not np.triu(mixed.matrices["alti"], k=1).any()
    assert list(mixed.skipped) == ["globenc"] and "\n" not in mixed.skipped["globenc"]
    assert "pre-norm RMSNorm" in mixed.skipped["globenc"]


@pytest.mark.parametrize("name", TINY)
def test_tiny_architectures_match_the_definitions(zoo, picture, name):
    model = zoo(name)
    check_against_references(name, model, picture if arch_zoo.BY_NAME[name].image else TEXT)


@pytest.mark.parametrize("kind", ["toy", "classifier", "vit"])
def test_attnvizs_own_models_match_the_definitions(kind, picture):
    check_against_references("custom", custom_model(kind), {"toy": "31415926", "classifier": "a b c d e"}.get(kind, picture))


# -- what mixing refuses, and how it reports ------------------------------------------------
def test_globenc_is_refused_with_one_line_on_a_pre_norm_model(zoo):
    llama = zoo("llama")
    with pytest.raises(AttnvizError) as e:
        attnviz.mixing(llama, TEXT, methods=("globenc",))
    assert "\n" not in str(e.value) and "post-norm" in str(e.value) and "pre-norm RMSNorm" in str(e.value)
    mixed = attnviz.mixing(llama, TEXT, methods=("globenc", "attention_norm"))
    assert list(mixed.skipped) == ["globenc"] and "globenc" not in mixed.matrices


@pytest.mark.parametrize("name", NOT_COVERED)
def test_architectures_not_covered_get_one_message(zoo, picture, name):
    model = zoo(name)
    with pytest.raises(AttnvizError, match="applies to BERT-like text encoders") as e:
        attnviz.mixing(model, picture if arch_zoo.BY_NAME[name].image else TEXT)
    assert "\n" not in str(e.value)


def test_an_lstm_classifier_has_no_layers_to_mix():
    from attnviz.lab.classify import Classifier, ClassifierConfig
    from attnviz.lab.custom import as_model

    net = Classifier(ClassifierConfig(arch="lstm-attention", task="csv", vocab_size=8, n_classes=2, length=8,
                                      d_model=8), vocab=WORDS)
    with pytest.raises(AttnvizError, match="no layers to mix"):
        attnviz.mixing(as_model(net, "lstm"), "a b c")


def test_a_vision_language_model_is_named_in_the_message(tmp_path, picture):
    model = attnviz.load_model(str(arch_zoo.save_vlm("llava", tmp_path / "llava")))
    with pytest.raises(AttnvizError, match="vision-language model.*applies to"):
        attnviz.mixing(model, picture)


def test_unknown_methods_and_other_captures_are_refused(zoo):
    bert = zoo("bert")
    with pytest.raises(AttnvizError, match="Unknown mixing method 'rollout'"):
        attnviz.mixing(bert, TEXT, methods=("alti", "rollout"))
    with pytest.raises(AttnvizError, match="give the capture of this input"):
        attnviz.mixing(bert, TEXT, result=attnviz.capture(bert, "Another, much longer text than the one mixed here."))
    with pytest.raises(AttnvizError, match="is of"):
        attnviz.mixing(bert, TEXT, result=attnviz.capture(zoo("roberta"), TEXT))


def test_value_zeroing_is_capped_reports_progress_and_cancels(zoo, monkeypatch):
    bert = zoo("bert")
    seen = []
    mixed = attnviz.mixing(bert, TEXT, methods=("value_zeroing",), progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert any("Value zeroing" in m for _, m in seen) and "value_zeroing" in mixed.matrices
    calls = []
    with pytest.raises(Cancelled, match="cancelled"):
        attnviz.mixing(bert, TEXT, methods=("value_zeroing",), cancel=lambda: calls.append(1) or len(calls) > 3)
    monkeypatch.setattr(mixing_module, "VALUE_ZEROING_MAX_TOKENS", 4)
    with pytest.raises(AttnvizError, match="capped at 4 tokens"):
        attnviz.mixing(bert, TEXT, methods=("value_zeroing",))
    mixed = attnviz.mixing(bert, TEXT, methods=("value_zeroing", "alti"))
    assert "capped at 4 tokens" in mixed.skipped["value_zeroing"]


def test_value_zeroing_batches_give_the_same_scores(zoo, monkeypatch):
    gpt2 = zoo("gpt2")
    whole = attnviz.mixing(gpt2, TEXT, methods=("value_zeroing",)).matrices["value_zeroing"]
    monkeypatch.setattr(mixing_module, "ZEROED_BYTES", 1)  # one zeroed run at a time
    np.testing.assert_allclose(attnviz.mixing(gpt2, TEXT, methods=("value_zeroing",)).matrices["value_zeroing"],
                               whole, atol=1e-5)


def test_value_norms_alone_equal_mixings_in_any_block_size(zoo, monkeypatch):
    llama = zoo("llama")
    mixed = attnviz.mixing(llama, TEXT, methods=("attention_norm",))
    seen = []
    norms = attnviz.value_norms(llama, TEXT, progress=lambda f, m: seen.append(f))
    np.testing.assert_allclose(norms, mixed.value_norms, rtol=1e-5)
    assert seen[-1] == 1.0 and len(seen) == len(norms)
    monkeypatch.setattr(mixing_module, "BLOCK_BYTES", 1)  # one token's vectors at a time
    np.testing.assert_allclose(attnviz.value_norms(llama, TEXT), norms, rtol=1e-6)
    np.testing.assert_allclose(attnviz.mixing(llama, TEXT, methods=("attention_norm", "alti")).matrices["alti"],
                               attnviz.mixing(llama, TEXT, methods=("alti",)).matrices["alti"], atol=1e-6)


def test_an_image_result_carries_its_grid_and_picture(zoo, picture):
    vit = zoo("vit")
    mixed = attnviz.mixing(vit, picture, methods=("alti",))
    result = attnviz.capture(vit, picture)
    assert mixed.kind == "image" and mixed.grid == result.grid and np.array_equal(mixed.image, result.image)
    assert mixed.special == result.special and mixed.special[0]
    rolled = mixed.rollout("alti")
    assert rolled.shape == (len(mixed.tokens),) * 2 and np.allclose(rolled.sum(-1), 1.0)
    np.testing.assert_allclose(mixed.flow("alti", 0).sum(), 1.0)
    with pytest.raises(AttnvizError, match="No 'globenc' mixing"):
        mixed.rollout("globenc")


def test_alti_heads_are_kept_only_within_their_bound(zoo, monkeypatch):
    bert = zoo("bert")
    mixed = attnviz.mixing(bert, TEXT, methods=("alti",))
    layers, heads, n, _ = mixed.alti_heads.shape
    assert (layers, heads, n) == (2, 4, len(mixed.tokens))
    monkeypatch.setattr(mixing_module, "ALTI_HEADS_BYTES", layers * heads * n * n * 4 - 1)
    smaller = attnviz.mixing(bert, TEXT, methods=("alti",))
    assert smaller.alti_heads is None and any("per-head" in w for w in smaller.warnings)
    np.testing.assert_allclose(smaller.matrices["alti"], mixed.matrices["alti"], atol=1e-6)


# -- the command line and the .npz contract -------------------------------------------------
def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "attnviz", "mixing", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_the_command_writes_the_npz_contract(tmp_path, minilm):
    out = tmp_path / "cat.npz"
    done = cli("--model", "minilm-l6", "--text", TEXT, "--pair", "It was good.", "--methods",
               "attention_norm,value_zeroing,alti,globenc", "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    with np.load(out, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        layers, heads, n = 6, 12, len(meta["tokens"])
        assert set(z.files) == {"meta", "mixing_attention", "mixing_attention_norm", "mixing_value_zeroing",
                                "mixing_alti", "mixing_globenc", "mixing_value_norms", "mixing_alti_heads"}
        for method in ("attention", "attention_norm", "value_zeroing", "alti", "globenc"):
            a = z[f"mixing_{method}"]
            assert a.dtype == np.float32 and a.shape == (layers, n, n), method
            np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5, err_msg=method)
        assert z["mixing_value_norms"].dtype == np.float32 and z["mixing_value_norms"].shape == (layers, heads, n)
        assert z["mixing_alti_heads"].dtype == np.float32 and z["mixing_alti_heads"].shape == (layers, heads, n, n)
        saved = {k: z[k] for k in z.files if k != "meta"}
    assert meta["format"] == 4 and meta["tokens"][0] == "[CLS]" and meta["tokens"].count("[SEP]") == 2
    assert len(meta["special"]) == n and meta["special"][0] and not meta["special"][1]
    assert meta["methods"] == ["attention", "attention_norm", "globenc", "alti", "value_zeroing"]
    assert summary["tokens"] == meta["tokens"] and summary["capture_digest"] == meta["capture_digest"]
    loaded = mixing_module.Mixing.load(out)
    assert loaded.tokens == meta["tokens"] and loaded.digest == meta["capture_digest"]
    np.testing.assert_array_equal(loaded.matrices["alti"], saved["mixing_alti"])
    np.testing.assert_array_equal(loaded.alti_heads, saved["mixing_alti_heads"])


def test_the_command_on_an_image_and_a_decoder(tmp_path, smollm):
    photo = tmp_path / "photo.png"
    y, x = np.mgrid[0:48, 0:64]
    Image.fromarray(np.stack([x * 3, y * 5, x + y], -1).astype(np.uint8)).save(photo)
    out = tmp_path / "photo.npz"
    done = cli("--model", "dinov2-small", "--image", str(photo), "--size", "56", "--methods", "alti", "--out", str(out))
    assert done.returncode == 0, done.stderr
    with np.load(out, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        assert meta["grid"]["rows"] * meta["grid"]["cols"] + meta["grid"]["prefix"] == len(meta["tokens"])
        assert z["image"].dtype == np.uint8 and z["mixing_alti"].shape == (12, len(meta["tokens"]), len(meta["tokens"]))
    out = tmp_path / "decoder.npz"
    done = cli("--model", "smollm2-135m", "--text", "Hi there", "--methods", "alti,globenc", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "globenc skipped" in done.stderr and "Traceback" not in done.stderr
    with np.load(out, allow_pickle=False) as z:
        assert "mixing_globenc" not in z.files and "globenc" in json.loads(str(z["meta"]))["skipped"]


@pytest.mark.parametrize("args, words", [
    (["--model", "minilm-l6", "--text", "x", "--methods", "alti,rollout"], ["Unknown mixing method 'rollout'"]),
    (["--model", "smollm2-135m", "--text", "x", "--methods", "globenc"], ["GlobEnc", "pre-norm"]),
    (["--model", "minilm-l6", "--image", "missing.png"], ["cannot read"]),
    (["--model", "minilm-l6", "--text", "   "], ["empty"]),
    (["--model", "no-such-model-here", "--text", "x"], []),
])
def test_the_command_refuses_bad_input_in_one_line(tmp_path, args, words):
    done = cli(*args, "--out", str(tmp_path / "x.npz"))
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr, done.stderr
    assert all(w in lines[0] for w in words), lines[0]


def test_long_inputs_are_cut_once_and_past_the_matrix_bound_refused(zoo, monkeypatch):
    bert = zoo("bert")  # reads at most 64 tokens
    long = " ".join(["word"] * 400)  # past the characters capture reads, and past the tokens
    for result in (None, attnviz.capture(bert, long)):
        mixed = attnviz.mixing(bert, long, methods=("attention_norm",), result=result)
        assert len(mixed.tokens) == 64
        assert sum("characters" in w for w in mixed.warnings) == 1 and sum("cut to" in w for w in mixed.warnings) == 1
    monkeypatch.setattr(mixing_module, "MATRIX_BYTES", 4 * 2 * 63 * 63)  # two layers of 63 x 63
    with pytest.raises(AttnvizError, match="at most 63 fit.*value_norms"):
        attnviz.mixing(bert, long)
    assert attnviz.value_norms(bert, long).shape == (2, 4, 64)
