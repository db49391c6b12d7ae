"""The encoder of encoder-decoder models: its self-attention stack only (the decoder's self-
and cross-attention are not mixed here). T5 (pre-norm RMSNorm), mBART and Pegasus (pre-norm
LayerNorm): the attention's input x is the first norm of the layer input h; BART and Marian
(post-norm LayerNorm, as BERT): x is h, and both norms come after their residuals.
"""
from __future__ import annotations

from typing import Callable

from attnviz.capture import TextInput
from attnviz.errors import AttnvizError
from attnviz.families.anatomy import Anatomy, Spec, build, config_heads, not_covered
from attnviz.models.model import Model
from attnviz.tokens import tokenize

PRE_NORM = Spec(layers="layers", value="self_attn.v_proj", out="self_attn.out_proj")
POST_NORM = Spec(layers="layers", value="self_attn.v_proj", out="self_attn.out_proj",
                 post_norms=("self_attn_layer_norm", "final_layer_norm"))
ARCHITECTURES = {  # model type -> (where the encoder keeps its layers, how its layers normalise)
    "t5": (Spec(layers="block", value="layer.0.SelfAttention.v", out="layer.0.SelfAttention.o"), "pre-norm RMSNorm"),
    "mbart": (PRE_NORM, "pre-norm LayerNorm"), "pegasus": (PRE_NORM, "pre-norm LayerNorm"),
    "bart": (POST_NORM, "post-norm LayerNorm"), "marian": (POST_NORM, "post-norm LayerNorm"),
}


def anatomy(model: Model) -> Anatomy:
    kind = model.net.config.model_type
    if kind not in ARCHITECTURES:
        raise not_covered(model.name, f"a {kind} encoder-decoder")
    spec, norm = ARCHITECTURES[kind]
    return Anatomy(name=f"the encoder of {model.name} (a {kind} encoder-decoder)", root=model.net,
                   layers=build(spec, model.net.get_encoder(), config_heads(model.net.config)), norm=norm)


def forward(model: Model, input: TextInput, size: int | None = None) -> Callable[[], object]:
    """Runs the encoder alone on the source text ``input``, tokenised as capture does."""
    if isinstance(input, tuple):
        raise AttnvizError(f"{model.name}: mixing reads the encoder's source text; give one text, not a pair.")
    enc, _ = tokenize(model, input)
    ids = enc["input_ids"].to(model.device)
    return lambda: model.net.get_encoder()(input_ids=ids, attention_mask=enc["attention_mask"].to(model.device))
