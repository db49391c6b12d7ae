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
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import arch_zoo  # noqa: E402
from arch_zoo import ARCHS, BY_NAME, IMAGE_MEAN, IMAGE_STD  # noqa: E402

import attnviz  # noqa: E402

TEXT = "The cat sat on the mat, and it was good."
TARGET = "A cat sat."
TOLERANCE = 1e-3
TEXT_ARCHS = [a.name for a in ARCHS if a.tokenizer]
IMAGE_ARCHS = [a.name for a in ARCHS if a.image]


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


def reference_net(folder: Path, name: str):
    """The same checkpoint loaded again by its own class, eager attention, nothing of attnviz."""
    import transformers

    cls = getattr(transformers, BY_NAME[name].model_class)
    return cls.from_pretrained(str(folder), attn_implementation="eager").eval()


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
    assert len(result.tokens) == ids.shape[1]
    assert result.stacks == list(expected)
    for stack, maps in expected.items():
        assert_same(result.attn[stack], stacked(maps))
    if arch.family == "decoder":
        assert result.causal and not np.triu(result.attn["decoder"].astype(np.float32), 1).any()


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
