"""Which input tokens matter for one output of the model, by seven methods, and how far each
agrees with blank-out (the definitions are in docs/explain.md).

    import attnviz
    from attnviz.explain import explain
    e = explain(attnviz.load_model("minilm-l6"), "The cat sat on the mat.")
    e.scores["rollout"], e.spearman()["rollout"]

The explained output, per family:

- decoder: the log-probability of the next token after the prompt (the model's top prediction,
  or ``target``, which must be one token);
- encoder-decoder: the log-probability of the target sequence (``target``, or the model's own
  greedy output), the sum over its tokens;
- text encoder without a task head: the sentence embedding, the mean of the last hidden state
  over every token; with a classification head: the log-probability of the class (``target``,
  a label or an index; the top class by default);
- image model: the CLS embedding (the pooled output), or the class log-probability with a head;
- a Build-your-own model of the agreement task: the log-probability of the verb it puts in the
  masked position (its top answer, or ``target``: "is", "are" or a digit).

Methods (``METHODS``): ``attention``, ``rollout``, ``flow`` and ``attn_x_grad`` read the
attention probabilities (attnviz.analysis.faithfulness); ``grad_x_input``,
``integrated_gradients`` and ``blankout`` are Captum's InputXGradient, IntegratedGradients and
FeatureAblation on the input embeddings (text) or the pixels (images). ``attention_norm``,
``globenc``, ``alti`` and ``value_zeroing`` are the context-mixing methods of attnviz.mixing
(docs/mixing.md), each carried to the explained output as rollout is: the output's mix vector
(the weights of the output positions, as attention and rollout use it) times the method's
rollout (attention_norm rolled out as rownorm(0.5 M + 0.5 I), the others as they are); an
encoder-decoder's mixing is its encoder's, carried by the last cross-attention layer's
weights, as attention is. ``routes`` is the routed share of ALTI's information-flow routes
(attnviz.analysis.routes) at their default threshold (about 5% of the L x N x N edges kept),
from the rows ``default_output_rows`` gives: how much of the output reaches each input token
through the kept edges; the threshold is in ``output["routes"]``. The default
(``DEFAULT_METHODS``) leaves value zeroing out. Blank-out replaces one
token by the tokenizer's mask token (else unk, else pad, else eos), or one patch by the mean
colour of the image, and measures the drop of the output: the log-probability lost, or
1 - cos(embedding, embedding blanked) for an embedding. Special tokens are never blanked: their
blank-out importance is 0, and every correlation is over the other tokens.

Unlike attnviz.capture, this runs the model with gradients (eager attention, the probabilities
kept in the graph, for the attention methods; the fused kernel for the others), never under
inference_mode. Memory: :func:`explain_bytes` (docs/explain.md).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.overrides import TorchFunctionMode

import attnviz.families as families
import attnviz.jobs as jobs
from attnviz.analysis import faithfulness as faith
from attnviz.capture import bound_text
from attnviz.errors import AttnvizError
from attnviz.inputs import clean_text
from attnviz.lab.toy_tasks import AGREEMENT_WORDS, MASK, STOP, encode
from attnviz.models.loader import Model
from attnviz.models.model import AS_LOADED
from attnviz.pixels import image_pixels
from attnviz.recorder import sdpa_attention, sdpa_probabilities
from attnviz.recording import accepts, last_logits_only
from attnviz.result import PatchGrid
from attnviz.tokens import special_flags, token_strings, tokenize, word_spans

MIXING_METHODS = ("attention_norm", "globenc", "alti", "value_zeroing")  # context mixing (attnviz.mixing)
ROUTES_METHOD = "alti"  # the mixing method whose routes the ``routes`` row follows
METHODS = ("attention", "rollout", "flow", "attn_x_grad", "grad_x_input", "integrated_gradients", "blankout",
           *MIXING_METHODS[:3], "routes", MIXING_METHODS[3])
DEFAULT_METHODS = METHODS[:-1]  # value zeroing (one layer pass per token per layer) runs when asked for
ATTENTION_METHODS = METHODS[:4]  # read the attention probabilities, from one pass with eager attention
CLASSIC_METHODS = METHODS[:7]  # the scoreboard's methods before context mixing
MIXING_ROWS = (*MIXING_METHODS, "routes")  # the rows made from attnviz.mixing's matrices, after the others
IG_STEPS = 32  # integrated gradients: points on the path from the baseline to the input
BATCH_BYTES = 128 * 10**6  # blank-out and integrated gradients batch inputs up to this estimated memory a batch
# (a batch is one step of the job: on two cores, smollm2-135m at 512 tokens is two inputs, 2 to 4 s)
FUSED = "fused"  # the gate's mode of explain's gradient and blank-out passes: the model switched to SDPA
SEQ2SEQ_GENERATE = families.get("encoder-decoder").EXTRA_TOKENS  # tokens of its own target when none is given
MAX_TOKENS = 512  # input tokens or patches explained at most: blank-out runs the model once per token
Progress = Callable[[float, str], None]


@dataclass
class Explanation:
    """Importance of every input token for one output, by method.

    tokens, special: the input tokens (for images: the prefix tokens, then the patches in
    row-major order) and which are special. output: what was explained (JSON-able).
    scores[method]: float64 ``[tokens]``. skipped[method]: why a method could not run.
    grid, image (images): the patch grid and the picture the model saw (uint8 [h, w, 3]).
    timings: seconds per method.
    """

    model: str
    kind: str
    tokens: list[str]
    special: list[bool]
    output: dict
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    word_spans: list[tuple[int, int]] = field(default_factory=list)
    grid: PatchGrid | None = None
    image: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def spearman(self) -> dict[str, float]:
        """Each method's Spearman correlation with blank-out over the non-special tokens (NaN
        where undefined); empty when blank-out did not run."""
        if "blankout" not in self.scores:
            return {}
        return {m: faith.spearman(s, self.scores["blankout"], self.special)
                for m, s in self.scores.items() if m != "blankout"}

    def to_json(self) -> dict:
        """``{"tokens", "special", "output", "scores", "spearman", "skipped"}``; an undefined
        correlation is null."""
        return {
            "tokens": self.tokens,
            "special": [bool(s) for s in self.special],
            "output": self.output,
            "scores": {m: [float(v) for v in s] for m, s in self.scores.items()},
            "spearman": {m: (None if math.isnan(r) else r) for m, r in self.spearman().items()},
            "skipped": self.skipped,
        }


@dataclass
class _Problem:
    """One input of one model, ready to be explained.

    inputs, baseline: ``[1, tokens, dim]`` embeddings (text) or ``[1, 3, h, w]`` pixels, the
    baseline being the blanked input (replacement tokens, or the mean colour).
    run(x, with_attention): the model on a batch x -> (value [B] (a log-probability) or
    [B, dim] (an embedding), the model's output object).
    groups: the token (text) or patch index of every element of the input, for blank-out.
    """

    kind: str
    tokens: list[str]
    special: list[bool]
    inputs: torch.Tensor
    baseline: torch.Tensor
    groups: torch.Tensor
    run: Callable[[torch.Tensor, bool], tuple[torch.Tensor, object]]
    output: dict
    mix: Callable[[object, torch.Tensor | None], tuple[np.ndarray, np.ndarray | None]]
    word_spans: list[tuple[int, int]] = field(default_factory=list)
    grid: PatchGrid | None = None
    image: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)
    embedding: torch.Tensor | None = None  # e(x), detached, when the output is an embedding

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """The scalar per input that gradients explain: the log-probability, or for an
        embedding its length along the direction of the input's own embedding."""
        v, _ = self.run(x, False)
        return v if self.embedding is None else v @ (self.embedding / self.embedding.norm())

    def kept(self, x: torch.Tensor) -> torch.Tensor:
        """What blank-out measures the drop of: the log-probability, or cos(e(x'), e(x))."""
        v, _ = self.run(x, False)
        if self.embedding is None:
            return v
        return torch.nn.functional.cosine_similarity(v, self.embedding[None], dim=-1)

    def per_token(self, attribution: torch.Tensor) -> np.ndarray:
        """An input-shaped attribution summed per token (text: over the embedding; images:
        over the channels and pixels of each patch, the prefix tokens 0)."""
        a = attribution.detach().double().cpu()[0]
        if self.kind == "text":
            return a.sum(-1).numpy()
        g = self.grid
        return np.concatenate([np.zeros(g.prefix), faith.patch_sums(a.sum(0).numpy(), g.rows, g.cols)])


# -- building the problem -------------------------------------------------------------------
def replacement_token(tokenizer) -> tuple[int, str]:
    """The blank-out token: the tokenizer's mask token, else unk, else pad, else eos."""
    for name in ("mask", "unk", "pad", "eos"):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            return int(token_id), tokenizer.convert_ids_to_tokens(int(token_id))
    raise AttnvizError("This tokenizer has no mask, unk, pad or eos token to blank tokens out with.")


def _text_problem(model: Model, text: str, target: str | None) -> _Problem:
    net, tok = model.net, model.tokenizer
    if isinstance(text, tuple):
        raise AttnvizError("explain takes one text, not a pair.")
    text = clean_text(str(text))
    enc, warnings = tokenize(model, text)
    if enc["input_ids"].shape[1] > MAX_TOKENS:
        warnings = [f"The input has {enc['input_ids'].shape[1]} tokens; explain reads at most {MAX_TOKENS} (blank-out "
                    f"runs the model once per token), so it was cut to the first {MAX_TOKENS}."]
        enc, _ = tokenize(model, text, limit=MAX_TOKENS)
    ids = enc["input_ids"].to(model.device)
    id_list = ids[0].tolist()
    special = special_flags(model, id_list)
    replace_id, replace_token = replacement_token(tok)
    embed = net.get_input_embeddings()
    blank_ids = torch.where(torch.tensor(special, device=ids.device)[None], ids, torch.full_like(ids, replace_id))
    with torch.no_grad():
        inputs, baseline = embed(ids), embed(blank_ids)
    n = ids.shape[1]
    problem = dict(kind="text", tokens=token_strings(model, id_list), special=special, inputs=inputs,
                   baseline=baseline, groups=torch.arange(n, device=ids.device).view(1, n, 1),
                   word_spans=word_spans(enc, n), warnings=warnings)
    ones = torch.ones_like(ids)
    blank = {"replacement": replace_token}

    output_kind = families.of(model).OUTPUT
    if output_kind == "next token":
        def run(x, attentions=False):
            out = net(inputs_embeds=x, attention_mask=ones.expand(len(x), -1), use_cache=False,
                      output_attentions=attentions, **last_only)
            return out.logits[:, -1].log_softmax(-1)[:, chosen], out

        last_only = last_logits_only(net)  # the explained output reads the last position alone
        with torch.no_grad():
            logits = net(input_ids=ids, attention_mask=ones, use_cache=False, **last_only).logits[0, -1]
        chosen = _next_token(tok, target, logits)
        output = {"what": "log-probability of the next token", "token": tok.decode([chosen]), "token_id": chosen,
                  "chosen": "top prediction" if target is None else "given",
                  "log_prob": float(logits.log_softmax(-1)[chosen]),
                  "blankout": {**blank, "measure": "log-probability lost"}}
        return _Problem(run=run, output=output, mix=lambda out, grad: (faith.one_hot(n, n - 1), None), **problem)

    if output_kind == "target":
        target_ids = _seq2seq_target(model, ids, target)

        def run(x, attentions=False):
            tgt = target_ids.expand(len(x), -1)
            out = net(inputs_embeds=x, attention_mask=ones.expand(len(x), -1), decoder_input_ids=tgt,
                      use_cache=False, output_attentions=attentions)
            logp = out.logits[:, :-1].log_softmax(-1).gather(-1, tgt[:, 1:, None])[..., 0]
            return logp.sum(-1), out

        with torch.no_grad():
            total = float(run(inputs)[0][0])
        output = {"what": "log-probability of the target sequence",
                  "target": tok.decode(target_ids[0, 1:], skip_special_tokens=True),
                  "target_tokens": token_strings(model, target_ids[0, 1:].tolist()),
                  "chosen": "generated" if target is None or not str(target).strip() else "given",
                  "log_prob": total, "blankout": {**blank, "measure": "log-probability lost"}}
        return _Problem(run=run, output=output, mix=_cross_mix, **problem)

    # a text encoder: its class head's log-probability, or the mean-pooled sentence embedding
    def forward(x, attentions=False):
        return net(inputs_embeds=x, attention_mask=ones.expand(len(x), -1), output_attentions=attentions)

    with torch.no_grad():
        first = forward(inputs)
    headed = _class_head(model, forward, first, target, problem, blank, "sentence embedding")
    if headed is not None:
        return headed

    def run(x, attentions=False):
        out = forward(x, attentions)
        return out.last_hidden_state.mean(dim=1), out

    embedding = first.last_hidden_state.mean(dim=1)[0]
    output = {"what": "sentence embedding (mean of the last hidden state over all tokens)",
              "dim": int(embedding.shape[0]), "norm": float(embedding.norm()),
              "blankout": {**blank, "measure": "1 - cos(embedding, embedding with the token blanked)"}}
    return _Problem(run=run, output=output, mix=lambda out, grad: (np.full(n, 1.0 / n), None), embedding=embedding,
                    **problem)


def _class_head(model: Model, forward, first, target: str | None, problem: dict, blank: dict,
                embedding: str) -> _Problem | None:
    """The class problem when the model's output ``first`` has class logits [1, classes];
    otherwise None (the ``embedding`` is explained, and a target is refused)."""
    logits = getattr(first, "logits", None)
    if logits is not None and logits.dim() == 2:
        return _class_problem(model.net, forward, logits[0], target, problem, blank, len(problem["tokens"]))
    if target is not None:
        raise AttnvizError(f"{model.name} has no task head: it explains its {embedding}, so --target does not apply.")
    return None


def _class_problem(net, forward, logits: torch.Tensor, target: str | None, problem: dict, blank: dict,
                   n: int, position: int = 0) -> _Problem:
    """A model with a classification head: the class's log-probability, read at ``position``."""
    labels = getattr(net.config, "id2label", None) or {}
    chosen = _class_index(labels, target, logits)

    def run(x, attentions=False):
        out = forward(x, attentions)
        return out.logits.log_softmax(-1)[:, chosen], out

    output = {"what": "log-probability of the class", "class": str(labels.get(chosen, chosen)), "index": chosen,
              "chosen": "top class" if target is None else "given",
              "log_prob": float(logits.log_softmax(-1)[chosen]), "blankout": {**blank, "measure": "log-probability lost"}}
    return _Problem(run=run, output=output, mix=lambda out, grad: (faith.one_hot(n, position), None), **problem)


def _next_token(tok, target: str | None, logits: torch.Tensor) -> int:
    if target is None:
        return int(logits.argmax())
    ids = tok(str(target), add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = " + ".join(repr(tok.decode([i])) for i in ids) or "nothing"
        raise AttnvizError(f"The target must be one token of the vocabulary; {target!r} is {pieces}.")
    return int(ids[0])


def _class_index(labels: dict, target: str | None, logits: torch.Tensor) -> int:
    if target is None:
        return int(logits.argmax())
    by_name = {str(v).lower(): int(k) for k, v in labels.items()}
    text = str(target).strip()
    if text.lower() in by_name:
        return by_name[text.lower()]
    if text.isdigit() and int(text) < logits.shape[-1]:
        return int(text)
    names = ", ".join(str(labels[k]) for k in sorted(labels)) if labels else f"0..{logits.shape[-1] - 1}"
    raise AttnvizError(f"Unknown class {target!r}; the classes are {names}.")


def _seq2seq_target(model: Model, ids: torch.Tensor, target: str | None) -> torch.Tensor:
    """Decoder input ids ``[1, 1 + T]``: the start token, then the target's tokens (eos
    included), the given target or the model's greedy output."""
    start = model.net.config.decoder_start_token_id
    if target is not None and str(target).strip():
        enc, _ = tokenize(model, clean_text(str(target)))
        return torch.cat([torch.tensor([[start]]), enc["input_ids"]], dim=1).to(model.device)
    with torch.no_grad():
        return model.net.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=SEQ2SEQ_GENERATE,
                                  do_sample=False)


def _cross_mix(out, grad: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray | None]:
    """An encoder-decoder reads the source through cross-attention: the last cross layer's
    weights (heads averaged, averaged over the target positions that predict a token) mix the
    encoder's output rows; the second mix, for attn_x_grad, is the same mean of
    relu(gradient * attention) (``grad``: the gradient of the last cross layer)."""
    cross = out.cross_attentions[-1][0].detach().double()  # [heads, target, source]
    weights = cross[:, :-1].mean(dim=(0, 1)).cpu().numpy()
    if grad is None:
        return weights / weights.sum(), None
    relevance = (grad[0].detach().double() * cross).clamp(min=0)[:, :-1].mean(dim=(0, 1)).cpu().numpy()
    return weights / weights.sum(), relevance


def _image_problem(model: Model, image: Image.Image, size: int | None, target: str | None) -> _Problem:
    net = model.net
    pixels, seen = image_pixels(model, image, size)
    patch = model.image.patch
    h, w = pixels.shape[-2:]
    rows, cols = h // patch, w // patch
    if rows * cols > MAX_TOKENS:
        raise AttnvizError(f"At this size {model.name} sees {rows * cols} patches; explain reads at most {MAX_TOKENS} "
                           "(blank-out runs the model once per patch): choose a smaller input size.")
    kwargs = {"interpolate_pos_encoding": True} if accepts(net, "interpolate_pos_encoding") else {}

    def forward(x, attentions=False):
        return net(pixel_values=x, output_attentions=attentions, **kwargs)

    with torch.no_grad():
        first = forward(pixels, True)
    n = first.attentions[-1].shape[-1]
    prefix = n - rows * cols
    tokens = [f"[{'CLS' if i == 0 else f'REG{i}'}]" for i in range(prefix)]
    tokens += [f"({r},{c})" for r in range(rows) for c in range(cols)]
    mean = pixels.mean(dim=(2, 3), keepdim=True)  # the mean colour, in the model's normalised units
    groups = torch.arange(rows * cols, device=pixels.device).view(1, 1, rows, 1, cols, 1)
    groups = groups.expand(1, 1, rows, patch, cols, patch).reshape(1, 1, h, w)
    problem = dict(kind="image", tokens=tokens, special=[i < prefix for i in range(n)], inputs=pixels,
                   baseline=mean.expand_as(pixels).contiguous(), groups=groups,
                   grid=PatchGrid(rows=rows, cols=cols, patch_px=patch, prefix=prefix),
                   image=np.asarray(seen, dtype=np.uint8))
    blank = {"replacement": "mean colour of the image"}
    headed = _class_head(model, forward, first, target, problem, blank, "CLS embedding")
    if headed is not None:
        return headed

    def run(x, attentions=False):
        out = forward(x, attentions)
        pooled = getattr(out, "pooler_output", None)
        return (pooled if pooled is not None else out.last_hidden_state[:, 0]), out

    with torch.no_grad():
        embedding = run(pixels)[0][0]
    output = {"what": "CLS embedding (the pooled output)", "dim": int(embedding.shape[0]),
              "norm": float(embedding.norm()), "size": [int(w), int(h)],
              "blankout": {**blank, "measure": "1 - cos(embedding, embedding with the patch blanked)"}}
    return _Problem(run=run, output=output, mix=lambda out, grad: (faith.one_hot(n, 0), None), embedding=embedding,
                    **problem)


class _ExplicitAttention(TorchFunctionMode):
    """Inside it, ``F.scaled_dot_product_attention`` runs as softmax(Q K^T * scale + mask) V
    (attnviz.recorder.sdpa_probabilities), so that the probabilities are in the autograd graph;
    ``maps`` holds them, one [batch, heads, queries, keys] tensor per call."""

    _ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")

    def __init__(self) -> None:
        super().__init__()
        self.maps: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        bound = dict(zip(self._ARGS, args), **kwargs)
        value = bound.pop("value")
        probs = sdpa_probabilities(**bound)
        if value.shape[-3] != probs.shape[-3]:  # grouped key/value heads
            value = value.repeat_interleave(probs.shape[-3] // value.shape[-3], dim=-3)
        self.maps.append(probs)
        return (probs @ value.float()).to(value.dtype)


def _custom_problem(model: Model, text, target: str | None) -> _Problem:
    """A Build-your-own model of the agreement task: the verb it writes in the masked position."""
    net = model.net
    if net.config.task != "agreement":
        raise AttnvizError(f"{model.name} learnt the {net.config.task} task, which has no masked output to explain: "
                           "train one on the agreement task.")
    if not isinstance(text, str):
        raise AttnvizError(f"{model.name} reads a text of digits, not {type(text).__name__}.")
    ids, warnings = encode(text, net.config.length)
    if MASK not in ids:
        raise AttnvizError(f"Mask the verb with {MASK}: explain reads {model.name}'s answer there.")
    position, n = ids.index(MASK), len(ids)
    special = [i in (MASK, STOP) for i in ids]  # the masked verb itself and the full stops
    ids_t = torch.tensor([ids], device=model.device)
    blank_t = torch.where(torch.tensor(special, device=model.device)[None], ids_t, torch.full_like(ids_t, MASK))
    with torch.no_grad():
        inputs, baseline = net.tokens(ids_t), net.tokens(blank_t)
        logp = net(ids_t)[0, position].log_softmax(-1)
    if target is None:
        chosen = int(logp.argmax())
    elif str(target).strip() in AGREEMENT_WORDS or str(target).strip().isdigit():
        word = str(target).strip()
        chosen = AGREEMENT_WORDS.index(word) if word in AGREEMENT_WORDS else int(word) % len(AGREEMENT_WORDS)
    else:
        raise AttnvizError(f"Unknown target {target!r}: give a word of {', '.join(AGREEMENT_WORDS)} or a digit.")

    def run(x, attentions=False):
        if not attentions:  # the fused kernel: no [heads, n, n] maps kept for the backward pass
            return net.forward_embeddings(x)[:, position].log_softmax(-1)[:, chosen], None
        with _ExplicitAttention() as rec:
            logits = net.forward_embeddings(x)
        return logits[:, position].log_softmax(-1)[:, chosen], SimpleNamespace(attentions=tuple(rec.maps))

    output = {"what": "log-probability of the masked verb", "token": AGREEMENT_WORDS[chosen], "token_id": chosen,
              "position": position, "chosen": "top prediction" if target is None else "given",
              "log_prob": float(logp[chosen]),
              "blankout": {"replacement": AGREEMENT_WORDS[MASK], "measure": "log-probability lost"}}
    return _Problem(kind="text", tokens=[AGREEMENT_WORDS[i] for i in ids], special=special, inputs=inputs,
                    baseline=baseline, groups=torch.arange(n, device=model.device).view(1, n, 1), run=run,
                    output=output, mix=lambda out, grad: (faith.one_hot(n, position), None),
                    word_spans=[(i, i + 1) for i in range(n)], warnings=warnings)


def problem_for(model: Model, input, *, target: str | None = None, size: int | None = None) -> _Problem:
    """The :class:`_Problem` of ``input`` (a text, or a PIL image for image models)."""
    output_kind = families.of(model).OUTPUT  # what the family's output is (attnviz.families)
    if output_kind == "own":
        return _custom_problem(model, input, target)
    if output_kind == "class":
        if not isinstance(input, Image.Image):
            raise AttnvizError(f"{model.name} is an image model: give it an image, not {type(input).__name__}.")
        return _image_problem(model, input, size, target)
    if isinstance(input, Image.Image):
        raise AttnvizError(f"{model.name} is a text model: give it text, not an image.")
    return _text_problem(model, input, target)


# -- memory -------------------------------------------------------------------------------
KEPT_PER_LINEAR_FLOAT = 1.5  # a backward pass keeps ~1.5 floats per float in and out of every linear layer
WORK_PER_LAYER = 2  # one layer's working set: ~2 times the floats in and out of its linear layers


@dataclass(frozen=True)
class Footprint:
    """What explain's memory grows with, read from a model (float32 throughout).

    layers, heads: self-attention layers (the encoder's for an encoder-decoder) and heads per
    layer, for the ``[heads, n, n]`` maps; linear: floats per input token that all the model's
    linear layers take in and give out (the output head excepted), which a backward pass keeps;
    inputs: floats per token of what is explained (an embedding, or a patch's pixels); outputs:
    floats per input of the output read (a decoder's vocabulary at its last position, an
    encoder-decoder's vocabulary at each target position, the classes, or the embedding);
    fused: whether the gradient and blank-out passes run a fused attention kernel (SDPA), which
    keeps no ``[heads, n, n]`` maps.
    """

    layers: int
    heads: int
    linear: int
    inputs: int
    outputs: int
    fused: bool

    def maps(self, n: int) -> int:
        """Bytes of one ``[heads, n, n]`` map per layer."""
        return 4 * self.layers * self.heads * n * n

    def forward(self, n: int) -> int:
        """Bytes one input of ``n`` tokens takes in a forward pass without gradients: one
        layer's working set (and its transient maps when not fused), the output, the input."""
        work = 4 * n * WORK_PER_LAYER * self.linear // max(self.layers, 1)
        maps = 0 if self.fused else 3 * 4 * self.heads * n * n
        return work + maps + 4 * (3 * self.outputs + 2 * n * self.inputs)

    def backward(self, n: int) -> int:
        """Bytes one input of ``n`` tokens takes in a forward and backward pass: what is kept for
        the backward pass (the maps too when not fused) and a forward pass's working set."""
        kept = int(4 * n * KEPT_PER_LINEAR_FLOAT * self.linear) + (0 if self.fused else 2 * self.maps(n))
        return kept + self.forward(n)

    def batch(self, per_input: int, count: int) -> int:
        """Inputs per batch: as many as fit BATCH_BYTES (at least 1, at most ``count``)."""
        return max(1, min(count, BATCH_BYTES // max(per_input, 1)))


def footprint(model: Model) -> Footprint:
    """The :class:`Footprint` of a model, from its modules and config."""
    net = model.net
    cfg = net.config
    output = families.of(model).OUTPUT
    image = families.reads(model) == "image"
    if image:
        cfg = getattr(cfg, "vision_config", None) or cfg
    head = net.get_output_embeddings() if hasattr(net, "get_output_embeddings") else None
    linear = sum(sum(m.weight.shape) for m in net.modules()
                 if m is not head and not isinstance(m, torch.nn.Embedding)
                 and isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 2)
    heads = next((v for k in ("num_attention_heads", "num_heads", "n_head", "n_heads")
                  if isinstance(v := getattr(cfg, k, None), int) and v > 0), 1)
    if output == "own":  # attnviz's own models: embeddings of d_model in and out
        inputs = outputs = cfg.d_model
    elif image:
        inputs = 3 * model.image.patch ** 2
        outputs = max(int(getattr(cfg, "hidden_size", 0) or 0), len(getattr(net.config, "id2label", None) or {}))
    else:
        inputs = net.get_input_embeddings().embedding_dim
        vocab = head.weight.shape[0] if head is not None else 0
        outputs = {"next token": vocab, "target": (SEQ2SEQ_GENERATE + 1) * vocab}.get(output, inputs)
    fused = output == "own" or (getattr(type(net), "_supports_sdpa", False)
                                and getattr(cfg, "_attn_implementation", None) in ("eager", "sdpa"))
    return Footprint(layers=max(model.n_layers, 1), heads=heads, linear=linear, inputs=inputs, outputs=outputs,
                     fused=bool(fused))


def explain_bytes(model: Model, n_tokens: int, methods: tuple[str, ...] = DEFAULT_METHODS,
                  ig_steps: int = IG_STEPS) -> int:
    """Bytes :func:`explain` takes at its peak beyond the model's weights, for an input of
    ``n_tokens`` tokens (image: patches and prefix tokens; a longer text is cut to MAX_TOKENS)
    by ``methods``: an upper estimate, checked against measured peaks in tests/test_explain.py.

    The methods run one after another, so the peak is the largest of: the attention pass (the
    ``[heads, n, n]`` maps of every layer, and for attn_x_grad what the backward pass keeps and
    each layer's ``[n, n]`` relevance, made as its gradient arrives; exact flow's graph), input
    x gradient (one forward and backward pass), integrated gradients and blank-out (a batch of
    BATCH_BYTES at most, or one input when one is more, plus the path's inputs and gradients),
    and the context-mixing methods (attnviz.mixing.mixing_bytes), over the input and its
    baseline; see :class:`Footprint`. An encoder-decoder's target is counted as
    SEQ2SEQ_GENERATE + 1 tokens.
    """
    from attnviz.mixing import mixing_bytes

    fp = footprint(model)
    n = max(1, min(int(n_tokens), MAX_TOKENS))
    passes = [fp.forward(n) + (fp.maps(n) if families.reads(model) == "image" else 0)]  # preparing the problem
    if set(methods) & set(ATTENTION_METHODS):
        attention = fp.forward(n) + 3 * 4 * fp.heads * n * n + fp.maps(n)
        if "attn_x_grad" in methods:  # the backward pass, a layer's gradient at a time, each layer's Abar kept
            attention += fp.backward(n) + 3 * 4 * fp.heads * n * n + 8 * fp.layers * n * n
        if "flow" in methods:
            attention += 4 * 8 * (fp.layers + 1) * n * n  # capacities and the flow graph's arrays
        passes.append(attention)
    if "grad_x_input" in methods:
        passes.append(fp.backward(n))
    if "integrated_gradients" in methods:
        batch = fp.batch(fp.backward(n), ig_steps)
        passes.append(batch * fp.backward(n) + 3 * 4 * ig_steps * n * fp.inputs)
    if "blankout" in methods:
        passes.append(fp.batch(fp.forward(n), n + 1) * fp.forward(n))
    mixed = tuple(m for m in MIXING_METHODS if m in methods or (m == ROUTES_METHOD and "routes" in methods))
    if mixed:  # mixing runs after the others: its matrices, beside the attention pass of its mix vector
        passes.append(mixing_bytes(model, n, mixed) + fp.forward(n) + fp.maps(n))
    return max(passes) + 4 * 4 * n * fp.inputs  # the input and its baseline, and their copies


def estimate_bytes(model: Model, input, *, size: int | None = None, methods: tuple[str, ...] = DEFAULT_METHODS,
                   ig_steps: int = IG_STEPS) -> int:
    """:func:`explain_bytes` of ``input`` before it is tokenised (what a server admits an
    explanation by): its tokens are bounded as attnviz.capture.estimate_bytes bounds them (a
    text of b UTF-8 bytes is at most 2b + 8 tokens; an image, its patches at ``size``), at most
    MAX_TOKENS."""
    from attnviz.capture import input_tokens

    return explain_bytes(model, min(MAX_TOKENS, input_tokens(model, input, size=size)), methods, ig_steps)


class _Progress:
    """explain's progress over its passes of the model, a backward pass counted as two."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, max(total, 1), 0

    def __call__(self, passes: int, message: str) -> None:
        self.done += passes
        if self.progress is not None:
            self.progress(min(self.done / self.total, 1.0), message)

    def counting(self, f: Callable, per_input: int, message: str) -> Callable:
        """``f`` (a function of a batch) that reports ``per_input`` passes for every input it runs."""
        def counted(x):
            self(per_input * len(x), message)
            return f(x)
        return counted


def _passes(methods: tuple[str, ...], n: int, ig_steps: int) -> int:
    """The passes of the model :func:`explain` makes before its mixing methods (a backward
    pass counted as two)."""
    total = 1  # preparing the problem
    if set(methods) & set(ATTENTION_METHODS):
        total += 3 if "attn_x_grad" in methods else 1
    total += 3 * ("grad_x_input" in methods) + 3 * ig_steps * ("integrated_gradients" in methods)
    return total + (n + 1) * ("blankout" in methods) + bool(set(methods) & set(MIXING_ROWS))


# -- the methods ----------------------------------------------------------------------------
def _float32_stack(tensors: list[torch.Tensor]) -> np.ndarray:
    """``[layers, heads, n, n]`` float32 from one ``[1, heads, n, n]`` tensor per layer, each
    dropped from ``tensors`` once copied (so the copy does not double the maps). The analysis
    reads each layer in float64, so this loses nothing against a float64 stack."""
    stack = np.empty((len(tensors), *tensors[0].shape[1:]), np.float32)
    for layer in range(len(tensors)):
        stack[layer] = tensors[layer][0].detach().float().cpu().numpy()
        tensors[layer] = None
    return stack


def _attention_methods(p: _Problem, methods: tuple[str, ...], out: Explanation,
                       step: _Progress) -> np.ndarray | None:
    """attention, rollout, flow and attn_x_grad from one forward pass (and a backward pass for
    attn_x_grad), the model's eager attention giving its probabilities; returns the output's
    mix vector (None when none of them was asked for)."""
    if not set(methods) & set(ATTENTION_METHODS):
        return None
    started = time.perf_counter()
    gradients = "attn_x_grad" in methods
    x = p.inputs.clone().requires_grad_() if gradients else p.inputs
    with torch.enable_grad() if gradients else torch.no_grad():
        value, out_obj = p.run(x, True)
        if p.embedding is not None:
            value = value @ (p.embedding / p.embedding.norm())
        seq2seq = hasattr(out_obj, "encoder_attentions") and out_obj.encoder_attentions is not None
        maps = list(out_obj.encoder_attentions if seq2seq else out_obj.attentions)
        weighted, cross_grad = [np.zeros(maps[0].shape[-2:])] * len(maps), []  # a layer the output ignores: 0
        if gradients:  # each layer's Abar as its gradient arrives: one layer's gradient held at a time
            for layer, m in enumerate(maps):
                m.register_hook(lambda grad, layer=layer: weighted.__setitem__(layer, faith.weighted_attention(
                    maps[layer][0].detach().cpu().numpy(), grad[0].detach().cpu().numpy())))
            if seq2seq:
                out_obj.cross_attentions[-1].register_hook(lambda grad: cross_grad.append(grad.detach()))
            torch.autograd.grad(value.sum(), x)
    mix, grad_mix = p.mix(out_obj, cross_grad[0] if cross_grad else None)
    del value, out_obj  # the maps live on in the list alone, dropped as they are copied
    attn = _float32_stack(maps)
    step(3 if gradients else 1, "Attention, rollout and flow")
    shared = time.perf_counter() - started
    for method in ATTENTION_METHODS:
        if method not in methods:
            continue
        t0 = time.perf_counter()
        if method == "attention":
            out.scores[method] = mix.copy() if seq2seq else faith.attention_scores(attn, mix)
        elif method == "rollout":
            out.scores[method] = faith.rollout_scores(attn, mix)
        elif method == "flow":
            if not faith.flow_fits(attn):
                n = attn.shape[-1]
                out.skipped[method] = (f"exact flow over {n} tokens and {attn.shape[0]} layers is too big a graph "
                                       f"(more than {faith.MAX_FLOW_EDGES:,} edges)")
                continue
            out.scores[method] = faith.flow_scores(attn, mix)
        else:
            out.scores[method] = faith.grad_rollout_scores(weighted, grad_mix if seq2seq else mix)
        out.timings[method] = time.perf_counter() - t0 + shared
    return mix


def _captum_methods(p: _Problem, model: Model, methods: tuple[str, ...], out: Explanation, ig_steps: int,
                    step: _Progress) -> None:
    """Input x gradient, integrated gradients and blank-out through Captum, ``p`` running the
    model's fused attention (nothing of the maps is kept), in batches of BATCH_BYTES."""
    from captum.attr import FeatureAblation, InputXGradient, IntegratedGradients

    fp = footprint(model)
    n = len(p.tokens)
    if "grad_x_input" in methods:
        t0 = time.perf_counter()
        value = step.counting(p.value, 3, "Input x gradient")
        out.scores["grad_x_input"] = p.per_token(InputXGradient(value).attribute(p.inputs.clone().requires_grad_()))
        out.timings["grad_x_input"] = time.perf_counter() - t0
    if "integrated_gradients" in methods:
        t0 = time.perf_counter()
        value = step.counting(p.value, 3, f"Integrated gradients ({ig_steps} steps)")
        attribution = IntegratedGradients(value).attribute(
            p.inputs.clone().requires_grad_(), baselines=p.baseline, n_steps=ig_steps,
            internal_batch_size=fp.batch(fp.backward(n), ig_steps))
        out.scores["integrated_gradients"] = p.per_token(attribution)
        out.timings["integrated_gradients"] = time.perf_counter() - t0
    if "blankout" in methods:
        t0 = time.perf_counter()
        kept = step.counting(p.kept, 1, f"Blank-out ({n + 1} passes)")
        with torch.no_grad():
            attribution = FeatureAblation(kept).attribute(p.inputs, baselines=p.baseline, feature_mask=p.groups,
                                                          perturbations_per_eval=fp.batch(fp.forward(n), n + 1))
        scores = _group_values(attribution, p)
        scores[np.asarray(p.special, dtype=bool)] = 0.0
        out.scores["blankout"] = scores
        out.timings["blankout"] = time.perf_counter() - t0


def _group_values(attribution: torch.Tensor, p: _Problem) -> np.ndarray:
    """FeatureAblation gives every element of a group its group's value: one per token."""
    a = attribution.detach().double().cpu()[0]
    if p.kind == "text":
        return a[:, 0].numpy()
    g = p.grid
    patches = a[0, ::g.patch_px, ::g.patch_px].reshape(-1).numpy()
    return np.concatenate([np.zeros(g.prefix), patches])


def stepped(run: Callable, model: Model, mode=AS_LOADED, setup: Callable | None = None) -> Callable:
    """``run`` (a problem's forward pass) as a step of the current job (attnviz.jobs): a
    checkpoint first, then the pass with the model's gate held in ``mode`` (``setup``: the
    mode's switch of the model, see attnviz.jobs.hold), so that other jobs' steps, on this
    model too, run between the passes of a long method."""
    def step(x, attentions=False):
        jobs.checkpoint()
        with jobs.hold(model.gate, mode, setup):
            return run(x, attentions)
    return step


def _mixing_methods(model: Model, input, size: int | None, p: _Problem, methods: tuple[str, ...],
                    out: Explanation, mix: np.ndarray | None = None) -> None:
    """attention_norm, globenc, alti and value_zeroing: the rollout of each method's matrices
    (attnviz.mixing) carried to the output by its mix vector; routes: the routed share of
    ALTI's routes at their default threshold, from the same matrices (mixing runs once). A
    method that does not apply, or an input mixing reads otherwise than explain does, is in
    ``skipped`` with the reason."""
    from attnviz.mixing import mixing

    rows = tuple(m for m in MIXING_ROWS if m in methods)
    computed = tuple(m for m in MIXING_METHODS if m in methods or (m == ROUTES_METHOD and "routes" in methods))
    if not rows:
        return
    started = time.perf_counter()
    try:
        mixed = mixing(model, input, methods=computed, size=size)
    except AttnvizError as e:
        out.skipped.update({m: str(e) for m in rows})
        return
    if len(mixed.tokens) != len(p.tokens):
        out.skipped.update({m: f"context mixing read {len(mixed.tokens)} tokens of this input and explain "
                               f"{len(p.tokens)}" for m in rows})
        return
    if mix is None:  # the attention pass did not run: one pass for the output's mix vector
        with torch.no_grad():  # p.run holds the model's gate per pass (stepped)
            mix, _ = p.mix(p.run(p.inputs, True)[1], None)
    shared = time.perf_counter() - started
    for method in rows:
        source = ROUTES_METHOD if method == "routes" else method
        if source in mixed.skipped:
            out.skipped[method] = mixed.skipped[source]
            continue
        t0 = time.perf_counter()
        if method == "routes":
            try:
                _routes_row(model, mixed, out)
            except AttnvizError as e:
                out.skipped[method] = str(e)
                continue
        else:
            out.scores[method] = np.asarray(mix, np.float64) @ mixed.rollout(method)
        out.timings[method] = time.perf_counter() - t0 + shared


def _routes_row(model: Model, mixed, out: Explanation) -> None:
    """The ``routes`` row: the routed share of each input token through ROUTES_METHOD's routes
    (attnviz.analysis.routes) at the default threshold, from default_output_rows; what was
    followed goes to ``out.output["routes"]``."""
    from attnviz.analysis.routes import DEFAULT_FRACTION, routes

    matrices = mixed.matrices[ROUTES_METHOD]
    r = routes(matrices, ROUTES_METHOD, default_output_rows(model, mixed.tokens))
    out.scores["routes"] = r.routed
    out.output["routes"] = {"method": ROUTES_METHOD, "threshold": r.threshold, "fraction": DEFAULT_FRACTION,
                            "edges_kept": len(r.edges), "edges": int(matrices.size),
                            "rows": [int(i) for i in r.outputs]}


def explain(model: Model, input, *, target: str | None = None, size: int | None = None,
            methods: tuple[str, ...] = DEFAULT_METHODS, ig_steps: int = IG_STEPS,
            progress: Progress | None = None) -> Explanation:
    """Importance of every input token for the model's output on ``input`` by each of
    ``methods`` (see the module docstring); a method that cannot run on this input is in
    ``skipped`` with the reason.

    A text is cut to MAX_TOKENS tokens' worth of characters before it is tokenised (and before
    the model's gate is taken), then to MAX_TOKENS tokens. It runs as a job (attnviz.jobs)
    admitted for :func:`estimate_bytes`, or within the caller's; the attention pass runs the
    model as loaded, the gradient and blank-out passes its fused attention (SDPA, mode FUSED),
    batched by bytes (:func:`explain_bytes`). progress: called after each pass or batch of
    passes of the model with the fraction done and a message."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise AttnvizError(f"Unknown method {unknown[0]!r}; the methods are {', '.join(METHODS)}.")
    cut: list[str] = []  # before any gate: a huge text is cut here, so tokenising it blocks nobody
    if isinstance(input, str):
        input = bound_text(input, model, cut, MAX_TOKENS)
    target = bound_text(target, model, cut, MAX_TOKENS)
    need = estimate_bytes(model, input, size=size, methods=methods, ig_steps=ig_steps)
    with jobs.within(f"Explaining with {model.name}", need), torch.inference_mode(False), torch.enable_grad():
        started = time.perf_counter()
        with jobs.hold(model.gate, AS_LOADED):
            p = problem_for(model, input, target=target, size=size)
        out = Explanation(model=model.name, kind=p.kind, tokens=p.tokens, special=p.special,
                          output={"model": model.name, **p.output}, word_spans=p.word_spans, grid=p.grid,
                          image=p.image, warnings=cut + p.warnings)
        out.timings["prepare"] = time.perf_counter() - started
        step = _Progress(progress, _passes(methods, len(p.tokens), ig_steps))
        step(1, f"Explaining with {model.name}")
        as_loaded = replace(p, run=stepped(p.run, model))
        mix = _attention_methods(as_loaded, methods, out, step)
        fused = replace(p, run=stepped(p.run, model, (FUSED, id(model.net)), lambda: sdpa_attention(model.net)))
        _captum_methods(fused, model, methods, out, ig_steps, step)
        _mixing_methods(model, input, size, as_loaded, methods, out, mix)
        if set(methods) & set(MIXING_ROWS):
            step(1, "Context mixing")
    out.scores = {m: out.scores[m] for m in METHODS if m in out.scores}  # the order of METHODS
    return out


CLASS_HEADS = ("ForSequenceClassification", "ForImageClassification")  # nets whose logits are [batch, classes]


def default_output_rows(model: Model, tokens: list[str]) -> list[int]:
    """The rows of the last layer that :func:`explain`'s default output reads, for an input of
    ``tokens`` (as capture and mixing read it): the last position of a decoder; 0 (CLS) of an
    image model or of a model with a classification head (a net of CLASS_HEADS); every token of
    a text encoder without one (its sentence embedding is their mean) and of an
    encoder-decoder's encoder (the decoder reads every row); the masked position of a
    Build-your-own agreement model. Sorted, never empty."""
    n = len(tokens)
    if n == 0:
        raise AttnvizError("There is no token to read an output from.")
    output_kind = families.of(model).OUTPUT
    if output_kind == "next token":
        return [n - 1]
    if output_kind == "own":
        if AGREEMENT_WORDS[MASK] not in tokens:
            raise AttnvizError(f"Mask the verb with {MASK}: {model.name}'s output is its answer there.")
        return [tokens.index(AGREEMENT_WORDS[MASK])]
    if output_kind == "class" or type(model.net).__name__.endswith(CLASS_HEADS):
        return [0]
    return list(range(n))
