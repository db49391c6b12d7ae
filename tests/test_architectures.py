"""Every common architecture, as a user would bring it: a tiny random checkpoint saved as a local
folder (tests/arch_zoo.py), loaded with attnviz.load_model(folder), captured, and compared with
an independent eager run of the same checkpoint on the same ids or pixels (to 1e-3).

Also: a text longer than each text model reads is cut with a warning (never a crash), and the
failures found when users tried their own checkpoints each have a regression test here.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.overrides import TorchFunctionMode

sys.path.insert(0, str(Path(__file__).parent))
import arch_zoo  # noqa: E402
from arch_zoo import ARCHS, BY_NAME, IMAGE_MEAN, IMAGE_STD  # noqa: E402

import attnviz  # noqa: E402

TEXT = "The cat sat on the mat, and it was good."
TARGET = "A cat sat."
TOLERANCE = 1e-3
TEXT_ARCHS = [a.name for a in ARCHS if a.tokenizer]
WINDOWED_ARCHS = ["swin", "swinv2", "donut-swin"]  # windowed attention, tested below
IMAGE_ARCHS = [a.name for a in ARCHS if a.image and a.name not in WINDOWED_ARCHS]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """``zoo(name)`` -> (folder, attnviz Model): built, saved and loaded once per module."""
    root, tokenizers, built = tmp_path_factory.mktemp("zoo"), {}, {}

    def get(name: str):
        if name not in built:
            folder = arch_zoo.save(BY_NAME[name], root / name, tokenizers)
            built[name] = folder, attnviz.load_model(str(folder))
        return built[name]
    return get


@pytest.fixture(scope="module")
def picture():
    """A 60 x 40 picture of smooth colour gradients (not square, so positions are interpolated)."""
    y, x = np.mgrid[0:40, 0:60]
    rgb = np.stack([x * 4, y * 6, (x + y) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    return Image.fromarray(rgb)


def reference_net(folder: Path, name: str, default: bool = False):
    """The same checkpoint loaded again by its own class, nothing of attnviz: with eager
    attention, or (``default``) with the attention transformers gives it by default."""
    import transformers

    cls = getattr(transformers, BY_NAME[name].model_class)
    kwargs = {} if default else {"attn_implementation": "eager"}
    return cls.from_pretrained(str(folder), **kwargs).eval()


def default_maps(folder: Path, name: str, ids: torch.Tensor) -> tuple[np.ndarray, str]:
    """(a decoder's own attention on its default path, float32 [layers, heads, queries, keys];
    that path's implementation): its ``output_attentions`` when the path is eager; when it is
    SDPA, torch's reference of what each SDPA call computes from its actual arguments (the
    full masks, as given)."""
    net = reference_net(folder, name, default=True)
    implementation = net.config._attn_implementation
    with torch.no_grad():
        if implementation == "eager":
            return stacked(net(input_ids=ids, output_attentions=True).attentions), implementation
        with attnviz.record_attention() as rec:
            net(input_ids=ids)
    return stacked(rec.maps), implementation


def stacked(attentions) -> np.ndarray:
    return torch.stack([a[0] for a in attentions]).float().numpy()


def assert_same(captured: np.ndarray, expected: np.ndarray) -> None:
    assert captured.shape == expected.shape, (captured.shape, expected.shape)
    assert np.abs(captured.astype(np.float32) - expected).max() < TOLERANCE
    rows = expected.reshape(-1, expected.shape[-1])
    uniform = 1 / np.maximum((rows > 0).sum(-1), 1)  # each row's weight if spread evenly over its keys
    peak, even = rows.max(-1).mean(), uniform.mean()
    assert peak > 2 * even or peak > even + 0.2, "attention this close to uniform could not tell maps apart"


def text_ids(folder: Path, text: str) -> torch.Tensor:
    import transformers

    return transformers.AutoTokenizer.from_pretrained(str(folder))(text, return_tensors="pt")["input_ids"]


def test_the_matrix_is_wide():
    assert len(ARCHS) >= 30
    assert {a.family for a in ARCHS} == {"encoder", "decoder", "encoder-decoder", "image"}


@pytest.mark.parametrize("name", TEXT_ARCHS)
def test_text_attention_is_the_models_own(zoo, name):
    folder, model = zoo(name)
    arch = BY_NAME[name]
    assert model.family == arch.family, f"{name} taken for {model.family}"
    ref = reference_net(folder, name)
    ids = text_ids(folder, TEXT)
    with torch.no_grad():
        if arch.family == "encoder-decoder":
            result = attnviz.capture(model, TEXT, target=TARGET)
            config = ref.config
            start = config.decoder_start_token_id if config.decoder_start_token_id is not None else config.eos_token_id
            target = torch.cat([torch.tensor([[start]]), text_ids(folder, TARGET)], dim=1)
            out = ref(input_ids=ids, decoder_input_ids=target, output_attentions=True)
            expected = {"encoder": out.encoder_attentions, "decoder": out.decoder_attentions,
                        "cross": out.cross_attentions}
        elif arch.family == "image":  # a two-tower model: text goes to its text tower
            result = attnviz.capture(model, TEXT)
            expected = {"encoder": ref.text_model(input_ids=ids, output_attentions=True).attentions}
        else:
            result = attnviz.capture(model, TEXT)
            expected = {arch.family: ref(input_ids=ids, output_attentions=True).attentions}
    expected = {s: stacked(maps) for s, maps in expected.items()}
    if not arch.eager:  # the eager path is not the model's (see arch_zoo.Arch)
        expected = {"decoder": default_maps(folder, name, ids)[0]}
    assert len(result.tokens) == ids.shape[1]
    assert result.stacks == list(expected)
    for stack, maps in expected.items():
        assert_same(result.attn[stack], maps)
    if arch.family == "decoder":
        assert result.causal and not np.triu(result.attn["decoder"].astype(np.float32), 1).any()


ALIBI_ARCHS = ["bloom", "mpt", "falcon-rw", "falcon-rw-mqa"]


@pytest.mark.parametrize("name", ALIBI_ARCHS)
def test_alibi_attention_stays_lazy_and_exact_past_the_small_result_threshold(zoo, name):
    """Each ALiBi decoder at about 3,000 tokens, where the whole stack (2 x 4 x n^2 weights) is
    above what attnviz materialises (lazy.SMALL_ELEMENTS), so its maps are computed from what
    was recorded, row block by row block: every head equals the model's own default attention,
    and the bias is held as one value per head and key, not per query and key."""
    from attnviz import lazy

    folder, model = zoo(name)
    text = " ".join([TEXT] * 250)
    result = attnviz.capture(model, text)
    stack = result.attn["decoder"]
    assert result.is_lazy("decoder") and result.warnings == []
    assert stack.size > lazy.SMALL_ELEMENTS and not stack.small
    ids = text_ids(folder, text)
    n = ids.shape[1]
    assert len(result.tokens) == n > 2900
    expected, implementation = default_maps(folder, name, ids)
    if implementation != "eager":  # whether the eager path computes the same (not for Falcon-RW, see arch_zoo.Arch)
        with torch.no_grad():
            eager = stacked(reference_net(folder, name)(input_ids=ids, output_attentions=True).attentions)
        assert (np.abs(eager - expected).max() < TOLERANCE) == BY_NAME[name].eager
        del eager
    for layer in range(stack.shape[0]):
        for head in range(stack.shape[1]):
            assert np.abs(result.attention(layer, head, "decoder") - expected[layer, head]).max() < TOLERANCE
    recorded_qk = sum(c.q.nbytes + c.k.nbytes for c in stack.calls)
    assert stack.nbytes <= recorded_qk + 4 * 4 * n, "the bias is [heads, keys], kept once"


@pytest.mark.parametrize("name", TEXT_ARCHS)
def test_text_longer_than_the_model_reads_is_cut_with_a_warning(zoo, name):
    _, model = zoo(name)
    kwargs = {"target": TARGET} if model.family == "encoder-decoder" else {}
    result = attnviz.capture(model, "word " * (model.max_tokens + 40), **kwargs)
    assert len(result.tokens) == model.max_tokens
    assert result.warnings and "cut" in result.warnings[0]


@pytest.mark.parametrize("name", IMAGE_ARCHS)
def test_image_attention_is_the_models_own(zoo, picture, name):
    folder, model = zoo(name)
    assert model.family == "image"
    result = attnviz.capture(model, picture)
    g = result.grid
    assert (g.rows, g.cols) == (4, 6), "shorter side 32 px in 8 px patches, aspect kept"
    pixels = (result.image.astype(np.float32) / 255 - np.array(IMAGE_MEAN, np.float32)) / np.array(IMAGE_STD, np.float32)
    pixel_values = torch.from_numpy(pixels.transpose(2, 0, 1)[None].copy())
    ref = reference_net(folder, name)
    tower = ref.vision_model if hasattr(ref, "text_model") else ref
    kwargs = {} if name.startswith("dinov2") else {"interpolate_pos_encoding": True}
    with torch.no_grad():
        expected = stacked(tower(pixel_values=pixel_values, output_attentions=True, **kwargs).attentions)
    assert_same(result.attn["encoder"], expected)
    assert len(result.tokens) == g.prefix + g.n_patches


def test_swin_windowed_attention_is_placed_back_on_each_stage_grid(zoo, picture, tmp_path):
    """Each block's window attention sits at its keys' places on the stage's grid; the last
    block of each stage (the one transformers returns) equals the reference's, slot by slot,
    the shifted windows included; and a stage works as a plain image result."""
    from attnviz.analysis.stats import head_stats
    from attnviz.viz.image import patch_token, query_heat

    folder, model = zoo("swin")
    assert model.family == "image" and model.image.align == 4 * 4 * 2
    result = attnviz.capture(model, picture)
    assert result.stacks == ["stage1", "stage2"]
    assert [(g.rows, g.cols, g.patch_px) for g in result.grids.values()] == [(8, 16, 4), (4, 8, 8)]
    assert result.image.shape == (32, 64, 3), "sides are whole windows at every stage"
    ref = reference_net(folder, "swin")
    pixels = (result.image.astype(np.float32) / 255 - np.array(IMAGE_MEAN, np.float32)) / np.array(IMAGE_STD, np.float32)
    with torch.no_grad():
        last_blocks = ref(pixel_values=torch.from_numpy(pixels.transpose(2, 0, 1)[None].copy()),
                          output_attentions=True).attentions
    for stack, expected, shift in zip(result.stacks, last_blocks, (2, 0)):
        grid, dense = result.grids[stack], result.attn[stack][-1].astype(np.float32)
        assert np.abs(dense.sum(-1) - 1).max() < TOLERANCE
        windows_across = grid.cols // 4
        for w in range(expected.shape[0]):
            cells = [((w // windows_across * 4 + i // 4 + shift) % grid.rows,
                      (w % windows_across * 4 + i % 4 + shift) % grid.cols) for i in range(16)]
            index = [r * grid.cols + c for r, c in cells]
            assert np.abs(dense[:, index][:, :, index] - expected[w].numpy()).max() < TOLERANCE
        assert ((dense > 0).sum(-1) <= 16).all(), "nothing outside the window"
    stage = result.for_stage("stage1")
    heat = query_heat(stage, 1, 0, patch_token(stage.grid, 3, 5))
    assert heat.shape == (8, 16) and np.count_nonzero(heat) <= 16
    stats = head_stats(stage, "encoder")
    assert stats.mean_distance.shape == (2, 2) and np.all(stats.mean_distance > 0)
    back = attnviz.AttentionResult.load(result.save(tmp_path / "swin.npz"))
    assert back.grids == result.grids and back.stacks == result.stacks


class SDPACalls(TorchFunctionMode):
    """Within: the batch of every ``F.scaled_dot_product_attention`` call, in ``batches``."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            self.batches.append(args[0].shape[0])
        return func(*args, **(kwargs or {}))


def own_window_attention(net, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """Every block's window attention ``[windows, heads, T, T]`` as the block computed it, in
    block order (transformers returns only each stage's last): eager, read by hooks on the
    blocks' attention modules."""
    seen = []
    hooks = [block.attention.register_forward_hook(lambda module, args, out: seen.append(out[1]))
             for stage in net.encoder.layers for block in stage.blocks]
    try:
        with torch.no_grad():
            net(pixel_values=pixel_values, output_attentions=True)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def placed_by_the_model(weights: torch.Tensor, block, rows: int, cols: int) -> np.ndarray:
    """``weights [windows, heads, T, T]`` on the grid, ``[heads, rows x cols, rows x cols]``, by
    the model's own padding, cyclic shift and cut into windows (transformers' ``maybe_pad``,
    ``torch.roll``, ``window_partition``) of a grid of token numbers; padding's slots left out."""
    numbers = torch.arange(1, rows * cols + 1, dtype=torch.float32).view(1, rows, cols, 1)
    numbers, _ = block.maybe_pad(numbers, rows, cols)  # padding: 0
    numbers = torch.roll(numbers, shifts=(-block.shift_size, -block.shift_size), dims=(1, 2))
    cut = sys.modules[type(block).__module__].window_partition(numbers, block.window_size)
    slots = cut.reshape(weights.shape[0], -1).long().numpy() - 1  # [windows, T]: token, or -1 on padding
    dense = np.zeros((weights.shape[1], rows * cols, rows * cols), np.float32)
    for w, tokens in enumerate(slots):
        on = tokens >= 0
        dense[:, tokens[on, None], tokens[None, on]] = weights[w].float().numpy()[:, on][:, :, on]
    return dense


@pytest.mark.parametrize("name", WINDOWED_ARCHS)
def test_windowed_attention_is_recorded_in_one_pass_as_each_block_computed_it(zoo, picture, name):
    """The whole model runs once, through the recorder (Swin: SDPA, one call per block with the
    block's windows as its batch; Swin V2 and Donut's encoder write their attention out, and
    their own probabilities are kept), and every block of every stage equals the block's own
    eager window attention placed on the grid by the model's own padding, shift and cut. At 64
    px both of Swin's stages shift their windows, after a capture at 32 px, whose second stage
    fills one window and so runs unshifted (transformers' Swin blocks keep that)."""
    folder, model = zoo(name)
    attnviz.capture(model, picture, size=32)
    passes = []
    hook = model.net.register_forward_pre_hook(lambda module, args: passes.append(len(args)))
    try:
        with SDPACalls() as sdpa:
            result = attnviz.capture(model, picture, size=64)
    finally:
        hook.remove()
    assert len(passes) == 1, "one forward pass of the whole model"
    grids = [(g.rows, g.cols) for g in result.grids.values()]
    assert grids == [(16, 24), (8, 12)] and result.image.shape == (64, 96, 3)
    windows = [rows // 4 * cols // 4 for rows, cols in grids for _ in range(2)]
    assert sdpa.batches == (windows if name == "swin" else []), "Swin runs SDPA, its windows the batch"
    pixels = (result.image.astype(np.float32) / 255 - np.array(IMAGE_MEAN, np.float32)) / np.array(IMAGE_STD, np.float32)
    ref = reference_net(folder, name)
    own = own_window_attention(ref, torch.from_numpy(pixels.transpose(2, 0, 1)[None].copy()))
    blocks = [(stack, b, block) for stack, stage in zip(result.stacks, ref.encoder.layers)
              for b, block in enumerate(stage.blocks)]
    if name == "swin":
        assert [block.shift_size for _, _, block in blocks] == [0, 2, 0, 2]
    for (stack, b, block), weights in zip(blocks, own, strict=True):
        grid = result.grids[stack]
        expected = placed_by_the_model(weights, block, grid.rows, grid.cols)
        np.testing.assert_allclose(result.attn[stack][b].astype(np.float32), expected, atol=1e-4, rtol=2 ** -10)


def test_unwindow_leaves_out_the_padding_of_a_grid_of_part_windows(zoo):
    """At 10 x 15 patches Swin pads its grid to 12 x 16 (then 5 x 8 to 8 x 8) for windows of 4
    patches: each block's own window attention placed by unwindow equals the model's own
    padding, shift and cut of the grid, the weights on padding left out."""
    from attnviz.families.image import unwindow

    folder, _ = zoo("swin")
    ref = reference_net(folder, "swin")
    own = own_window_attention(ref, torch.randn(1, 3, 40, 60, generator=torch.Generator().manual_seed(0)))
    blocks = [(dims, block) for dims, stage in zip([(10, 15), (5, 8)], ref.encoder.layers) for block in stage.blocks]
    assert [block.shift_size for _, block in blocks] == [0, 2, 0, 2]
    for ((rows, cols), block), weights in zip(blocks, own, strict=True):
        got = unwindow(weights, (rows, cols), block.window_size, block.shift_size).numpy()
        np.testing.assert_allclose(got, placed_by_the_model(weights, block, rows, cols), atol=1e-7)
        assert got.sum(-1).min() < 0.99, "a patch beside the padding gives it weight, left out"


# -- regressions: what broke when users brought these ----------------------------------------
@pytest.mark.parametrize("name", ["roberta", "xlm-roberta"])
def test_roberta_length_cap_counts_positions_from_padding_idx(zoo, name):
    """Positions start at padding_idx + 1, so a 64-position table embeds 62 tokens, not 64."""
    _, model = zoo(name)
    assert model.net.config.max_position_embeddings == 64 and model.net.config.pad_token_id == 1
    assert model.max_tokens == 62


def test_mbart_without_decoder_start_token_starts_from_eos(zoo):
    _, model = zoo("mbart")
    assert model.net.config.decoder_start_token_id is None
    result = attnviz.capture(model, TEXT, target=TARGET)
    assert result.target_tokens[0] == model.tokenizer.convert_ids_to_tokens(model.net.config.eos_token_id)
    generated = attnviz.capture(model, TEXT)
    assert len(generated.target_tokens) > 1


@pytest.mark.parametrize("name", ["siglip", "clip"])
def test_two_tower_checkpoint_uses_the_tower_that_matches_the_input(zoo, picture, name):
    _, model = zoo(name)
    image = attnviz.capture(model, picture)
    text = attnviz.capture(model, TEXT)
    assert image.kind == "image" and text.kind == "text"
    vision = model.net.config.vision_config
    assert image.attn["encoder"].shape[:2] == (vision.num_hidden_layers, vision.num_attention_heads)
    assert text.attn["encoder"].shape[2] == len(text.tokens)
    assert text.causal == (name == "clip"), "CLIP's text tower is causal, SigLIP's is not"
    assert text.is_lazy("encoder") and not text.warnings, "the text tower is recorded as every capture is"


def test_bare_decoder_is_causal_and_refuses_to_generate(zoo):
    _, model = zoo("gpt2-bare")
    assert type(model.net).__name__ == "GPT2Model" and model.family == "decoder"
    result = attnviz.capture(model, TEXT)
    assert result.causal and result.stacks == ["decoder"]
    with pytest.raises(attnviz.AttnvizError, match="without a language-model head"):
        attnviz.capture(model, TEXT, generate=2)


def test_deit_distillation_token_is_labelled_as_such(zoo, picture):
    _, model = zoo("deit")
    result = attnviz.capture(model, picture)
    assert result.tokens[:2] == ["[CLS]", "[DIST]"] and result.grid.prefix == 2
    _, registers = zoo("dinov2-registers")
    assert attnviz.capture(registers, picture).tokens[:5] == ["[CLS]", "[REG1]", "[REG2]", "[REG3]", "[REG4]"]


# -- options that do not apply, and checkpoints that cannot be shown -------------------------
@pytest.mark.parametrize("name, input, options, match", [
    ("bert", TEXT, {"generate": 3}, "generate= applies to decoders; .* is an encoder model"),
    ("bert", TEXT, {"target": TARGET}, "target= applies to encoder-decoders"),
    ("bert", TEXT, {"size": 224}, "size= applies to images"),
    ("bert", ("a", "b", "c"), {}, "a pair of texts .* got 3 items"),
    ("t5", (TEXT, TARGET), {}, "give the source as the input and the target as target="),
    ("t5", TEXT, {"generate": 3}, "generate= applies to decoders"),
    ("llama", TEXT, {"target": TARGET}, "target= applies to encoder-decoders"),
    ("llama", (TEXT, TARGET), {}, "takes one text, not a pair"),
    ("llama", TEXT, {"generate": -1}, "0 or more"),
    ("vit", TEXT, {}, "image model: give it an image"),
])
def test_capture_refuses_options_that_do_not_apply(zoo, name, input, options, match):
    _, model = zoo(name)
    with pytest.raises(attnviz.AttnvizError, match=match):
        attnviz.capture(model, input, **options)


def test_size_on_text_and_generate_on_images_are_refused(zoo, picture):
    _, model = zoo("vit")
    with pytest.raises(attnviz.AttnvizError, match="generate= applies to decoders"):
        attnviz.capture(model, picture, generate=2)


UNSUPPORTED = {
    "resnet": ("ResNetModel", lambda tf: tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]),
               "without attention layers"),
    "whisper": ("WhisperModel", lambda tf: tf.WhisperConfig(d_model=32, encoder_layers=1, decoder_layers=1,
                                                            encoder_attention_heads=2, decoder_attention_heads=2,
                                                            encoder_ffn_dim=32, decoder_ffn_dim=32), "a speech model"),
    "videomae": ("VideoMAEModel", lambda tf: tf.VideoMAEConfig(**arch_zoo.VISION, num_frames=2, tubelet_size=1),
                 "a video model"),
}


@pytest.fixture(scope="module")
def unsupported(tmp_path_factory):
    import transformers

    root = tmp_path_factory.mktemp("unsupported")
    for name, (cls, config, _) in UNSUPPORTED.items():
        getattr(transformers, cls)(config(transformers)).save_pretrained(root / name)
    return root


@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_unsupported_checkpoint_gets_one_clear_line(unsupported, name, capsys, tmp_path):
    from attnviz.cli import main

    match = UNSUPPORTED[name][2]
    with pytest.raises(attnviz.AttnvizError, match=match):
        attnviz.load_model(str(unsupported / name))
    code = main(["capture", "--model", str(unsupported / name), "--text", "hello", "--out", str(tmp_path / "r.npz")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and match in err and "Traceback" not in err
    assert f"model type '{name}'" in err


@pytest.mark.parametrize("config, match", [("Blip2Config", "image tokens attnviz cannot place"),
                                           ("Florence2Config", "image tokens attnviz cannot place"),
                                           ("Wav2Vec2Config", "a speech model")])
def test_unsupported_kinds_are_refused_before_any_weight_is_read(tmp_path, config, match):
    """The refusal comes from the config alone (the weights here are not even valid)."""
    import transformers

    getattr(transformers, config)().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not read")
    with pytest.raises(attnviz.AttnvizError, match=match):
        attnviz.load_model(str(tmp_path))


# -- API edges: a model already loaded, maps recorded from any code ----------------------------
def test_load_model_accepts_a_loaded_transformers_model(zoo, picture):
    import transformers

    folder, from_folder = zoo("bert")
    net = transformers.BertModel.from_pretrained(str(folder), attn_implementation="sdpa")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = attnviz.load_model(net, tokenizer=tokenizer)
    assert model.family == "encoder" and model.max_tokens == from_folder.max_tokens
    assert np.array_equal(attnviz.capture(model, TEXT).attn["encoder"], attnviz.capture(from_folder, TEXT).attn["encoder"])

    folder, from_folder = zoo("vit")
    processor = transformers.AutoImageProcessor.from_pretrained(str(folder))
    model = attnviz.load_model(transformers.ViTModel.from_pretrained(str(folder)), processor=processor)
    assert model.family == "image" and model.image == from_folder.image
    assert np.array_equal(attnviz.capture(model, picture).attn["encoder"],
                          attnviz.capture(from_folder, picture).attn["encoder"])


def test_load_model_refuses_what_it_cannot_wrap(zoo):
    import transformers

    with pytest.raises(attnviz.AttnvizError, match="record_attention"):
        attnviz.load_model(torch.nn.Linear(2, 2))
    folder, _ = zoo("llama")
    with pytest.raises(attnviz.AttnvizError, match="give its tokenizer too"):
        attnviz.load_model(transformers.LlamaForCausalLM.from_pretrained(str(folder)))


def test_recorded_maps_become_a_result_for_every_view_and_the_command_line(zoo, tmp_path, capsys):
    """A model run through fused SDPA kernels, recorded, equals attnviz's own eager capture."""
    import json

    import transformers

    from attnviz.cli import main

    folder, model = zoo("llama")
    net = transformers.LlamaForCausalLM.from_pretrained(str(folder), attn_implementation="sdpa").eval()
    ids = text_ids(folder, TEXT)
    with torch.no_grad(), attnviz.record_attention() as rec:
        net(input_ids=ids)
    result = attnviz.AttentionResult.from_maps(rec.maps, tokens=model.tokenizer.convert_ids_to_tokens(ids[0]))
    own = attnviz.capture(model, TEXT)
    assert result.stacks == ["decoder"] and result.causal
    assert np.abs(result.attn["decoder"].astype(np.float32) - own.attn["decoder"].astype(np.float32)).max() < TOLERANCE
    path = result.save(tmp_path / "recorded.npz")
    assert main(["stats", str(path), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["stack"] == "decoder" and len(stats["entropy"]) == 2


def test_from_maps_refuses_maps_of_different_shapes():
    with pytest.raises(attnviz.AttnvizError, match="one shape"):
        attnviz.AttentionResult.from_maps([torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 4, 4)])
    with pytest.raises(attnviz.AttnvizError, match="3 tokens were given"):
        attnviz.AttentionResult.from_maps([torch.full((1, 2, 4, 4), 0.25)], tokens=["a", "b", "c"])


# -- vision-language models: LLaVA-, PaliGemma- and Idefics3-style ----------------------------
VLMS = ["llava", "paligemma", "idefics3"]
PROMPT = "What is in the picture?"


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    root, built = tmp_path_factory.mktemp("vlm"), {}

    def get(kind: str):
        if kind not in built:
            folder = arch_zoo.save_vlm(kind, root / kind)
            built[kind] = folder, attnviz.load_model(str(folder))
        return built[kind]
    return get


@pytest.mark.parametrize("kind", VLMS)
def test_vision_language_attention_is_the_models_own(vlm, picture, kind):
    import transformers

    folder, model = vlm(kind)
    assert model.family == "vision-language"
    result = attnviz.capture(model, picture, prompt=PROMPT, generate=2)
    processor = transformers.AutoProcessor.from_pretrained(str(folder))
    ref = transformers.AutoModelForImageTextToText.from_pretrained(str(folder), attn_implementation="eager").eval()
    text = PROMPT if kind == "paligemma" else f"<image>{PROMPT}"
    enc = {k: v for k, v in processor(images=[picture], text=text, return_tensors="pt").items() if k != "labels"}
    with torch.no_grad():
        ids = ref.generate(**enc, max_new_tokens=2, do_sample=False)
        enc.update(input_ids=ids, attention_mask=torch.ones_like(ids))
        if "token_type_ids" in enc:
            enc["token_type_ids"] = torch.cat([enc["token_type_ids"], torch.ones(1, 2, dtype=torch.long)], dim=1)
        expected = stacked(ref(**enc, output_attentions=True).attentions)
    assert_same(result.attn["decoder"], expected)
    assert result.is_lazy("decoder") and not result.warnings, "recorded, the vision tower's calls left out"
    assert len(result.tokens) == ids.shape[1] == result.prompt_len + 2
    assert result.causal == (kind != "paligemma"), "PaliGemma reads its image and prompt both ways"


@pytest.mark.parametrize("kind, grids", [("llava", {"image": (4, 4)}), ("paligemma", {"image": (4, 4)}),
                                         ("idefics3", {"tiles": (4, 4), "global": (2, 2)})])
def test_image_tokens_are_placed_back_on_the_picture(vlm, picture, kind, grids):
    _, model = vlm(kind)
    result = attnviz.capture(model, picture, prompt=PROMPT)
    image_id = model.net.config.image_token_id
    ids = model.processor(images=[picture], text=PROMPT if kind == "paligemma" else f"<image>{PROMPT}",
                          return_tensors="pt")["input_ids"][0]
    placed = {name: np.array(cells) for name, cells in result.image_tokens.items()}
    assert {name: cells.shape for name, cells in placed.items()} == grids
    everywhere = np.concatenate([cells.ravel() for cells in placed.values()])
    assert sorted(everywhere.tolist()) == (ids == image_id).nonzero()[:, 0].tolist(), "every image token, once"
    h, w = result.image.shape[:2]
    seen = np.asarray(picture.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    assert np.abs(result.image.astype(np.float32) - seen).mean() < 12, "the picture the model saw is the photo"
    last = len(result.tokens) - 1
    heat = result.image_heat(list(grids)[0], 1, 0, last)
    assert heat.shape == grids[list(grids)[0]] and 0 < heat.sum() <= 1 + TOLERANCE
    assert np.allclose(heat, result.attn["decoder"][1, 0, last][placed[list(grids)[0]]].astype(np.float32))


def test_vision_language_options(vlm, zoo, picture):
    _, model = vlm("llava")
    with pytest.raises(attnviz.AttnvizError, match="give it an image"):
        attnviz.capture(model, PROMPT)
    with pytest.raises(attnviz.AttnvizError, match="processor sizes the image"):
        attnviz.capture(model, picture, prompt=PROMPT, size=64)
    _, vit = zoo("vit")
    with pytest.raises(attnviz.AttnvizError, match="prompt= applies to vision-language models"):
        attnviz.capture(vit, picture, prompt=PROMPT)


def test_command_line_reads_an_image_and_a_prompt(vlm, picture, tmp_path, capsys):
    from attnviz.cli import main

    folder, _ = vlm("llava")
    photo = tmp_path / "photo.png"
    picture.save(photo)
    out = tmp_path / "vlm.npz"
    assert main(["capture", "--model", str(folder), "--image", str(photo), "--prompt", PROMPT,
                 "--generate", "2", "--out", str(out)]) == 0
    back = attnviz.AttentionResult.load(out)
    assert back.image_tokens and np.array(back.image_tokens["image"]).shape == (4, 4) and back.image is not None
    assert main(["capture", "--model", str(folder), "--text", PROMPT, "--out", str(out)]) == 1
    assert "give it an image" in capsys.readouterr().err


def test_a_swin_t_sized_capture_estimate_holds_and_is_not_that_of_dense_maps_at_every_layer(tmp_path):
    """A Swin-T-sized model (random weights: 4 stages of 2, 2, 6, 2 blocks with 3 to 24 heads,
    windows of 7, 224 px: 56 x 56 patches in stage 1) keeps dense maps per stage, a sixteenth
    of the patches' squares at each stage down: its capture estimate (capture.estimate_bytes,
    what a server admits it by) is at most 25% below the measured peak, and not the 20 GB of
    every block's maps at stage 1's size that once refused it under the default budget."""
    from peaks import measured_peak

    arch = arch_zoo.Arch("swin-t", "image", "SwinModel", arch_zoo.plain(
        "SwinConfig", image_size=224, patch_size=4, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
        window_size=7), image=True)
    folder = arch_zoo.save(arch, tmp_path / "swin-t", {})
    peak, estimate = measured_peak(
        f"""
        import ctypes
        import attnviz, numpy as np
        from PIL import Image
        from attnviz.capture import estimate_bytes
        model = attnviz.load_model({str(folder)!r})
        image = Image.fromarray((np.random.default_rng(0).random((224, 224, 3)) * 255).astype(np.uint8))
        attnviz.capture(model, image, size=224)  # warm-up
        estimate = estimate_bytes(model, image, size=224)
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the system: the capture must grow the RSS
        """,
        "attnviz.capture(model, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), size=224)")
    assert peak > 100e6  # stage 1's maps: 2 blocks x 3 heads x 3,136^2 in float16, 118 MB
    assert 0.75 * peak <= estimate <= 8 * peak, (estimate / 1e6, peak / 1e6)
