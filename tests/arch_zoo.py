"""Tiny randomly initialised checkpoints of many architectures, saved as local folders.

Each :class:`Arch` says how to build one: a transformers config (hidden 32, 2 layers), the
class to instantiate, and which bundled model's tokenizer (or which image processor) goes into
the folder. Weights are drawn with a fixed seed and a larger spread than transformers' own
initialisation (``SPREAD`` over the square root of the fan-in), so that attention rows are far
from uniform and a wrong map cannot pass for the right one. Nothing is downloaded: the
tokenizers are those of the bundled models (BERT WordPiece from minilm-l6, byte-level BPE from
smollm2-135m, SentencePiece from t5-small-titler).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

SPREAD = 2.5
IMAGE_SIDE, PATCH = 32, 8
IMAGE_MEAN, IMAGE_STD = (0.40, 0.45, 0.50), (0.25, 0.30, 0.35)
TOKENIZER_OF = {"bert": "minilm-l6", "bpe": "smollm2-135m", "t5": "t5-small-titler"}
VOCAB = {"bert": 30522, "bpe": 49152, "t5": 32100}


@dataclass(frozen=True)
class Arch:
    """One architecture: ``family`` as attnviz should find it; ``config()`` builds the config;
    ``model_class`` the transformers class saved (its name goes into config.architectures);
    ``tokenizer`` a key of TOKENIZER_OF for text models, None for image-only ones; ``eager``:
    whether transformers' eager attention (``output_attentions``) computes what the model's
    default attention does (not for Falcon-RW's layout, whose eager path adds ALiBi twice)."""

    name: str
    family: str
    model_class: str
    config: Callable[[], object]
    tokenizer: str | None = None
    image: bool = False
    extra: dict = field(default_factory=dict)
    eager: bool = True


def _tf():
    import transformers

    return transformers


def text(cls: str, vocab: str, **kw) -> Callable[[], object]:
    def make():
        return getattr(_tf(), cls)(vocab_size=VOCAB[vocab], **kw)
    return make


def plain(cls: str, **kw) -> Callable[[], object]:
    return lambda: getattr(_tf(), cls)(**kw)


SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
POSITIONS = 64  # every text model here reads at most 64 tokens, so long texts are cut
DECODER = dict(SMALL, num_key_value_heads=2, max_position_embeddings=POSITIONS, head_dim=8)
BERT_IDS = dict(pad_token_id=0, bos_token_id=101, eos_token_id=102)
SEQ2SEQ = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
               decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
               max_position_embeddings=POSITIONS, pad_token_id=0, eos_token_id=1, bos_token_id=2)
VISION = dict(SMALL, image_size=IMAGE_SIDE, patch_size=PATCH)
WINDOWED = dict(image_size=IMAGE_SIDE, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4)
# ALiBi decoders read long inputs: LONG positions, past the length (2,897 tokens for 2 layers x 4
# heads) above which a stack is no longer materialised whole (attnviz.lazy.SMALL_ELEMENTS). BLOOM
# has no position table; the config's max_position_embeddings is the cap attnviz reads.
LONG = 3072
FALCON_RW = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, alibi=True, new_decoder_architecture=False,
                 max_position_embeddings=LONG)


def _clip_config():
    tf = _tf()
    return tf.CLIPConfig(text_config=dict(vocab_size=VOCAB["bpe"], hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=4, intermediate_size=64,
                                          max_position_embeddings=POSITIONS, bos_token_id=0, eos_token_id=2),
                         vision_config=VISION, projection_dim=16)


def _siglip_config():
    tf = _tf()
    return tf.SiglipConfig(text_config=dict(vocab_size=VOCAB["t5"], hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=4, intermediate_size=64,
                                            max_position_embeddings=POSITIONS, bos_token_id=0, eos_token_id=1),
                           vision_config=VISION)


ARCHS: list[Arch] = [
    # text encoders (BERT WordPiece)
    Arch("bert", "encoder", "BertModel", text("BertConfig", "bert", **SMALL, max_position_embeddings=POSITIONS), "bert"),
    Arch("roberta", "encoder", "RobertaModel", text("RobertaConfig", "bert", **SMALL, max_position_embeddings=POSITIONS), "bert"),
    Arch("xlm-roberta", "encoder", "XLMRobertaModel",
         text("XLMRobertaConfig", "bert", **SMALL, max_position_embeddings=POSITIONS), "bert"),
    Arch("distilbert", "encoder", "DistilBertModel",
         text("DistilBertConfig", "bert", dim=32, n_layers=2, n_heads=4, hidden_dim=64,
              max_position_embeddings=POSITIONS), "bert"),
    Arch("albert", "encoder", "AlbertModel",
         text("AlbertConfig", "bert", embedding_size=16, **SMALL, max_position_embeddings=POSITIONS), "bert"),
    Arch("electra", "encoder", "ElectraModel",
         text("ElectraConfig", "bert", embedding_size=16, **SMALL, max_position_embeddings=POSITIONS), "bert"),
    Arch("deberta-v2", "encoder", "DebertaV2Model",
         text("DebertaV2Config", "bert", **SMALL, max_position_embeddings=POSITIONS, relative_attention=True,
              position_buckets=16, pos_att_type=["p2c", "c2p"]), "bert"),
    Arch("modernbert", "encoder", "ModernBertModel",
         text("ModernBertConfig", "bert", **SMALL, max_position_embeddings=POSITIONS, local_attention=8,
              global_attn_every_n_layers=2, pad_token_id=0, bos_token_id=101, eos_token_id=102,
              cls_token_id=101, sep_token_id=102), "bert"),
    # decoders (byte-level BPE)
    Arch("gpt2", "decoder", "GPT2LMHeadModel",
         text("GPT2Config", "bpe", n_embd=32, n_layer=2, n_head=4, n_positions=POSITIONS, bos_token_id=0,
              eos_token_id=0), "bpe"),
    Arch("gpt2-bare", "decoder", "GPT2Model",
         text("GPT2Config", "bpe", n_embd=32, n_layer=2, n_head=4, n_positions=POSITIONS, bos_token_id=0,
              eos_token_id=0), "bpe"),
    Arch("gpt-neox", "decoder", "GPTNeoXForCausalLM",
         text("GPTNeoXConfig", "bpe", **SMALL, max_position_embeddings=POSITIONS), "bpe"),
    Arch("opt", "decoder", "OPTForCausalLM",
         text("OPTConfig", "bpe", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
              word_embed_proj_dim=32, max_position_embeddings=POSITIONS), "bpe"),
    Arch("llama", "decoder", "LlamaForCausalLM", text("LlamaConfig", "bpe", **DECODER), "bpe"),
    Arch("mistral", "decoder", "MistralForCausalLM", text("MistralConfig", "bpe", **DECODER, sliding_window=16), "bpe"),
    Arch("qwen2", "decoder", "Qwen2ForCausalLM", text("Qwen2Config", "bpe", **DECODER), "bpe"),
    Arch("qwen3", "decoder", "Qwen3ForCausalLM", text("Qwen3Config", "bpe", **DECODER), "bpe"),
    Arch("gemma", "decoder", "GemmaForCausalLM", text("GemmaConfig", "bpe", **DECODER), "bpe"),
    Arch("gemma2", "decoder", "Gemma2ForCausalLM",
         text("Gemma2Config", "bpe", **DECODER, sliding_window=8, query_pre_attn_scalar=1), "bpe"),
    Arch("gemma3", "decoder", "Gemma3ForCausalLM",
         text("Gemma3TextConfig", "bpe", **DECODER, sliding_window=8, sliding_window_pattern=2,
              query_pre_attn_scalar=1), "bpe"),
    Arch("phi3", "decoder", "Phi3ForCausalLM", text("Phi3Config", "bpe", **DECODER, pad_token_id=0), "bpe"),
    Arch("falcon", "decoder", "FalconForCausalLM",
         text("FalconConfig", "bpe", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=POSITIONS), "bpe"),
    # ALiBi decoders: the bias enters after the 1/sqrt(d) scaling, by key position j (BLOOM) or by
    # j - (n - 1) (MPT), or before it, folded into the SDPA mask (Falcon-RW's layout)
    Arch("bloom", "decoder", "BloomForCausalLM",
         text("BloomConfig", "bpe", hidden_size=32, n_layer=2, n_head=4, max_position_embeddings=LONG), "bpe"),
    Arch("mpt", "decoder", "MptForCausalLM",
         text("MptConfig", "bpe", d_model=32, n_layers=2, n_heads=4, expansion_ratio=2, max_seq_len=LONG), "bpe"),
    Arch("falcon-rw", "decoder", "FalconForCausalLM", text("FalconConfig", "bpe", **FALCON_RW, multi_query=False),
         "bpe", eager=False),
    Arch("falcon-rw-mqa", "decoder", "FalconForCausalLM", text("FalconConfig", "bpe", **FALCON_RW, multi_query=True),
         "bpe", eager=False),
    # encoder-decoders (SentencePiece)
    Arch("t5", "encoder-decoder", "T5ForConditionalGeneration",
         text("T5Config", "t5", d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4, decoder_start_token_id=0), "t5"),
    Arch("bart", "encoder-decoder", "BartForConditionalGeneration",
         text("BartConfig", "t5", **SEQ2SEQ, decoder_start_token_id=1), "t5"),
    Arch("mbart", "encoder-decoder", "MBartForConditionalGeneration", text("MBartConfig", "t5", **SEQ2SEQ), "t5"),
    Arch("pegasus", "encoder-decoder", "PegasusForConditionalGeneration",
         text("PegasusConfig", "t5", **SEQ2SEQ, decoder_start_token_id=0), "t5"),
    Arch("marian", "encoder-decoder", "MarianMTModel",
         text("MarianConfig", "t5", **SEQ2SEQ, decoder_start_token_id=0, decoder_vocab_size=VOCAB["t5"]), "t5"),
    # image encoders
    Arch("vit", "image", "ViTModel", plain("ViTConfig", **VISION), image=True),
    Arch("deit", "image", "DeiTModel", plain("DeiTConfig", **VISION), image=True),
    Arch("beit", "image", "BeitModel", plain("BeitConfig", **VISION, use_relative_position_bias=True), image=True),
    Arch("dinov2", "image", "Dinov2Model", plain("Dinov2Config", **VISION), image=True),
    Arch("dinov2-registers", "image", "Dinov2WithRegistersModel",
         plain("Dinov2WithRegistersConfig", **VISION, num_register_tokens=4), image=True),
    Arch("siglip-vision", "image", "SiglipVisionModel", plain("SiglipVisionConfig", **VISION), image=True),
    Arch("clip-vision", "image", "CLIPVisionModel", plain("CLIPVisionConfig", **VISION), image=True),
    # windowed attention: 2 stages, windows of 4 x 4 patches, shifted in every second block (Swin V2 and
    # Donut's encoder write their attention out in torch operations, Swin V2's cosine attention scaled per head)
    Arch("swin", "image", "SwinModel", plain("SwinConfig", **WINDOWED), image=True),
    Arch("swinv2", "image", "Swinv2Model", plain("Swinv2Config", **WINDOWED), image=True),
    Arch("donut-swin", "image", "DonutSwinModel", plain("DonutSwinConfig", **WINDOWED), image=True),
    # two towers: the image goes to the vision tower, a text to the text tower
    Arch("clip", "image", "CLIPModel", _clip_config, "bpe", image=True),
    Arch("siglip", "image", "SiglipModel", _siglip_config, "t5", image=True),
]
BY_NAME = {a.name: a for a in ARCHS}

# vision-language: a tiny vision tower, a tiny language model, and the processor that expands the
# image token of a prompt into the image's tokens (images of 32 px in 8 px patches: 16 tokens)
VLM_TEXT = dict(DECODER, max_position_embeddings=256)
VLM_VISION = dict(SMALL, image_size=IMAGE_SIDE, patch_size=PATCH)
# ALiBi decoders read long inputs: LONG positions, past the length (2,897 tokens for 2 layers x 4
# heads) above which a stack is no longer materialised whole (attnviz.lazy.SMALL_ELEMENTS). BLOOM
# has no position table; the config's max_position_embeddings is the cap attnviz reads.
LONG = 3072
FALCON_RW = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, alibi=True, new_decoder_architecture=False,
                 max_position_embeddings=LONG)
VLM_TOKENS = {"llava": ["<image>"], "paligemma": ["<image>"],
              "idefics3": ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"]}


def save_vlm(kind: str, folder: Path, seed: int = 0, text: dict | None = None, vision: dict | None = None) -> Path:
    """A tiny LLaVA-, PaliGemma- or Idefics3-style checkpoint (Idefics3 cuts a picture into tiles
    of 32 px, after resizing its longer side to 64 px, and reads the whole picture once more).
    ``text``, ``vision``: settings of the language model's and the vision tower's configs over
    VLM_TEXT and VLM_VISION (a wider model for bench/long; the picture's side and patch follow
    the vision tower's ``image_size`` and ``patch_size``)."""
    text, vision = dict(VLM_TEXT, **(text or {})), dict(VLM_VISION, **(vision or {}))
    side, patch = vision["image_size"], vision["patch_size"]
    tf = _tf()
    tf.utils.logging.disable_progress_bar()
    tokenizer = bundled_tokenizer("bpe")
    tokenizer.add_special_tokens({"additional_special_tokens": VLM_TOKENS[kind]})
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    vocab = len(tokenizer)
    mean, std = list(IMAGE_MEAN), list(IMAGE_STD)
    if kind == "llava":
        config = tf.LlavaConfig(vision_config=tf.CLIPVisionConfig(**vision),
                                text_config=tf.LlamaConfig(vocab_size=vocab, **text), image_token_index=image_id)
        images = tf.CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                       image_mean=mean, image_std=std)
        processor = tf.LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=patch,
                                      vision_feature_select_strategy="default", num_additional_image_tokens=1)
        net = tf.LlavaForConditionalGeneration(config)
    elif kind == "paligemma":
        config = tf.PaliGemmaConfig(vision_config=tf.SiglipVisionConfig(**vision),
                                    text_config=tf.GemmaConfig(vocab_size=vocab, **text), image_token_index=image_id,
                                    projection_dim=text["hidden_size"])
        images = tf.SiglipImageProcessor(size={"height": side, "width": side}, image_mean=mean, image_std=std)
        images.image_seq_length = (side // patch) ** 2
        processor = tf.PaliGemmaProcessor(image_processor=images, tokenizer=tokenizer)
        net = tf.PaliGemmaForConditionalGeneration(config)
    else:
        config = tf.Idefics3Config(vision_config=dict(vision), text_config=tf.LlamaConfig(vocab_size=vocab, **text),
                                   image_token_id=image_id, scale_factor=2)
        images = tf.Idefics3ImageProcessor(size={"longest_edge": 2 * side}, max_image_size={"longest_edge": side},
                                           do_image_splitting=True, image_mean=mean, image_std=std)
        processor = tf.Idefics3Processor(image_processor=images, tokenizer=tokenizer, image_seq_len=4)
        net = tf.Idefics3ForConditionalGeneration(config)
    torch.manual_seed(seed)
    spread_weights(net.eval(), seed)
    net.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder


def spread_weights(net: torch.nn.Module, seed: int = 0) -> None:
    """Redraw every matrix (and embedding table) as N(0, SPREAD^2 / fan_in), fixed seed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(net.named_parameters()):
            if p.dim() >= 2:
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=g) * (SPREAD / math.sqrt(fan_in)))
            elif name.endswith(("q_norm.weight", "k_norm.weight")):  # normalised queries and keys (Qwen3, Gemma3)
                p.fill_(SPREAD)


def bundled_tokenizer(kind: str):
    from attnviz.models import store

    folder = store.ensure(TOKENIZER_OF[kind])
    return _tf().AutoTokenizer.from_pretrained(str(folder))


def save(arch: Arch, folder: Path, tokenizers: dict) -> Path:
    """Build ``arch`` with seeded, spread weights and save it (safetensors) under ``folder``."""
    tf = _tf()
    tf.utils.logging.disable_progress_bar()
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = arch.config()
    net = getattr(tf, arch.model_class)(config).eval()
    spread_weights(net)
    net.save_pretrained(folder, safe_serialization=True)
    if arch.tokenizer:
        if arch.tokenizer not in tokenizers:
            tokenizers[arch.tokenizer] = bundled_tokenizer(arch.tokenizer)
        tokenizers[arch.tokenizer].save_pretrained(folder)
    if arch.image:
        tf.ViTImageProcessor(size={"height": IMAGE_SIDE, "width": IMAGE_SIDE}, image_mean=list(IMAGE_MEAN),
                             image_std=list(IMAGE_STD)).save_pretrained(folder)
    return folder


def page_folders(root: Path, vlm: str) -> dict[str, Path]:
    """A tiny vision-language checkpoint of kind ``vlm`` and a tiny Swin, saved as the folders
    "tiny-<vlm>" and "tiny-swin" that the page tests open; by kind."""
    return {vlm: save_vlm(vlm, root / f"tiny-{vlm}"), "swin": save(BY_NAME["swin"], root / "tiny-swin", {})}
