"""attnviz.explain and attnviz.analysis.faithfulness on real models: blank-out and input x
gradient recomputed here by hand (token ids replaced, patches painted, torch.autograd), the
attention-based methods against their matrix definitions, Spearman against scipy, and the
`explain` command's JSON."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT
from flow_reference import networkx_flows
from scipy.stats import spearmanr

from attnviz.analysis import faithfulness as faith
from attnviz.analysis.flow import attention_flow, augmented_layer, flow_capacities, rollout
from attnviz.errors import AttnvizError
from attnviz.explain import DEFAULT_METHODS, METHODS, explain, replacement_token
from attnviz.models.loader import Model

TEXT = "The keys to the old cabinet are on the table."
PROMPT = "The capital of France is"
RAW = ("attention", "rollout", "flow", "attn_x_grad")


def cos_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return 1.0 - float(torch.nn.functional.cosine_similarity(a, b, dim=-1))


# -- blank-out by hand ----------------------------------------------------------------------
def test_blankout_text_encoder_by_hand(minilm):
    e = explain(minilm, TEXT, methods=("blankout",))
    tok = minilm.tokenizer
    ids = tok(TEXT, return_tensors="pt")["input_ids"]
    assert e.tokens[0] == "[CLS]" and e.special[0] and e.special[-1] and len(e.tokens) == ids.shape[1]
    with torch.no_grad():
        base = minilm.net(input_ids=ids).last_hidden_state.mean(dim=1)[0]
        expected = np.zeros(ids.shape[1])
        for i in range(1, ids.shape[1] - 1):  # [CLS] and [SEP] are never blanked
            blanked = ids.clone()
            blanked[0, i] = tok.mask_token_id
            expected[i] = cos_distance(minilm.net(input_ids=blanked).last_hidden_state.mean(dim=1)[0], base)
    np.testing.assert_allclose(e.scores["blankout"], expected, atol=2e-5)
    assert e.scores["blankout"][1:-1].min() > 0
    assert e.output["blankout"]["replacement"] == "[MASK]" and e.spearman() == {}


def test_blankout_decoder_by_hand(smollm):
    e = explain(smollm, PROMPT, methods=("blankout",))
    tok = smollm.tokenizer
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logp = smollm.net(input_ids=ids).logits[0, -1].log_softmax(-1)
    chosen = int(logp.argmax())
    assert e.output["token_id"] == chosen and e.output["chosen"] == "top prediction"
    assert e.output["log_prob"] == pytest.approx(float(logp[chosen]), abs=1e-5)
    assert replacement_token(tok) == (tok.unk_token_id, tok.convert_ids_to_tokens(tok.unk_token_id))
    expected = []
    with torch.no_grad():
        for i in range(ids.shape[1]):
            blanked = ids.clone()
            blanked[0, i] = tok.unk_token_id  # SmolLM2 has no mask token: unk is next
            expected.append(float(logp[chosen] - smollm.net(input_ids=blanked).logits[0, -1].log_softmax(-1)[chosen]))
    np.testing.assert_allclose(e.scores["blankout"], expected, atol=2e-4)


def test_decoder_target_must_be_one_token(smollm):
    e = explain(smollm, PROMPT, target=" Paris", methods=("blankout",))
    assert e.output["token"] == " Paris" and e.output["chosen"] == "given"
    with pytest.raises(AttnvizError, match="one token"):
        explain(smollm, PROMPT, target=" Paris is", methods=("blankout",))


def image_pixels(model: Model, picture: np.ndarray) -> torch.Tensor:
    """The picture the model saw (uint8 [h, w, 3]) as normalised pixel_values [1, 3, h, w]."""
    x = picture.astype(np.float32) / 255.0
    x = (x - np.array(model.image.mean, np.float32)) / np.array(model.image.std, np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1)[None].copy())


def test_blankout_image_by_hand(dinov2, photo):
    e = explain(dinov2, photo, size=56, methods=("blankout",))
    grid = e.grid
    assert (grid.rows, grid.cols, grid.prefix) == (4, 6, 1) and e.image.shape == (56, 84, 3)
    assert len(e.tokens) == 1 + 24 and e.tokens[1] == "(0,0)" and e.special == [True] + [False] * 24
    pixels = image_pixels(dinov2, e.image)
    mean_colour = pixels.mean(dim=(2, 3), keepdim=True)
    p = grid.patch_px
    with torch.no_grad():
        base = dinov2.net(pixel_values=pixels).pooler_output[0]
        expected = [0.0]
        for r in range(grid.rows):
            for c in range(grid.cols):
                painted = pixels.clone()
                painted[:, :, r * p:(r + 1) * p, c * p:(c + 1) * p] = mean_colour
                expected.append(cos_distance(dinov2.net(pixel_values=painted).pooler_output[0], base))
    np.testing.assert_allclose(e.scores["blankout"], expected, atol=2e-5)


# -- gradients by hand ----------------------------------------------------------------------
def test_grad_x_input_against_autograd_text_encoder(minilm):
    e = explain(minilm, TEXT, methods=("grad_x_input",))
    ids = minilm.tokenizer(TEXT, return_tensors="pt")["input_ids"]
    emb = minilm.net.get_input_embeddings()(ids).detach().requires_grad_()
    pooled = minilm.net(inputs_embeds=emb).last_hidden_state.mean(dim=1)[0]
    direction = pooled.detach() / pooled.detach().norm()
    (pooled @ direction).backward()
    np.testing.assert_allclose(e.scores["grad_x_input"], (emb.grad * emb).sum(-1)[0].detach().numpy(), atol=1e-5)


def test_grad_x_input_against_autograd_decoder(smollm):
    e = explain(smollm, PROMPT, methods=("grad_x_input",))
    ids = smollm.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    emb = smollm.net.get_input_embeddings()(ids).detach().requires_grad_()
    smollm.net(inputs_embeds=emb).logits[0, -1].log_softmax(-1)[e.output["token_id"]].backward()
    np.testing.assert_allclose(e.scores["grad_x_input"], (emb.grad * emb).sum(-1)[0].detach().numpy(), atol=1e-4)


def test_grad_x_input_against_autograd_image(dinov2, photo):
    e = explain(dinov2, photo, size=56, methods=("grad_x_input",))
    pixels = image_pixels(dinov2, e.image).requires_grad_()
    pooled = dinov2.net(pixel_values=pixels).pooler_output[0]
    (pooled @ (pooled.detach() / pooled.detach().norm())).backward()
    per_pixel = (pixels.grad * pixels).sum(1)[0].detach().numpy()  # [h, w]
    p = e.grid.patch_px
    expected = [0.0] + [per_pixel[r * p:(r + 1) * p, c * p:(c + 1) * p].sum()
                        for r in range(e.grid.rows) for c in range(e.grid.cols)]
    np.testing.assert_allclose(e.scores["grad_x_input"], expected, atol=1e-4)


def test_integrated_gradients_add_up_to_the_change_from_the_blank_input(minilm):
    """Completeness: the attributions sum to f(input) - f(every token blanked)."""
    e = explain(minilm, TEXT, methods=("integrated_gradients",), ig_steps=64)
    tok = minilm.tokenizer
    ids = tok(TEXT, return_tensors="pt")["input_ids"]
    blank = ids.clone()
    blank[0, 1:-1] = tok.mask_token_id
    with torch.no_grad():
        pooled = minilm.net(input_ids=ids).last_hidden_state.mean(dim=1)[0]
        blank_pooled = minilm.net(input_ids=blank).last_hidden_state.mean(dim=1)[0]
    direction = pooled / pooled.norm()
    change = float(pooled @ direction - blank_pooled @ direction)
    assert e.scores["integrated_gradients"][[0, -1]].tolist() == [0.0, 0.0]  # specials equal their baseline
    assert e.scores["integrated_gradients"].sum() == pytest.approx(change, rel=0.02)


# -- the attention-based methods --------------------------------------------------------------
def test_attention_methods_follow_their_definitions(minilm):
    e = explain(minilm, TEXT, methods=RAW)
    ids = minilm.tokenizer(TEXT, return_tensors="pt")["input_ids"]
    emb = minilm.net.get_input_embeddings()(ids).detach().requires_grad_()  # a loaded model's weights are frozen
    out = minilm.net(inputs_embeds=emb, output_attentions=True)
    pooled = out.last_hidden_state.mean(dim=1)[0]
    grads = torch.autograd.grad(pooled @ (pooled.detach() / pooled.detach().norm()), out.attentions)
    attn = np.stack([a[0].detach().double().numpy() for a in out.attentions])
    g = np.stack([x[0].double().numpy() for x in grads])
    n = attn.shape[-1]
    np.testing.assert_allclose(e.scores["attention"], attn[-1].mean(0).mean(0), atol=1e-6)  # every row, mean-pooled
    np.testing.assert_allclose(e.scores["rollout"], rollout(attn).mean(0), atol=1e-6)
    relevance = np.eye(n)  # Chefer et al. 2021, as matrices from the first layer up
    for layer in range(attn.shape[0]):
        relevance = relevance + np.maximum(g[layer] * attn[layer], 0).mean(0) @ relevance
    np.testing.assert_allclose(e.scores["attn_x_grad"], relevance.mean(0), atol=1e-6)
    assert e.scores["flow"].sum() == pytest.approx(1.0)


def test_decoder_reads_its_last_position(smollm):
    e = explain(smollm, PROMPT, methods=("attention", "rollout"))
    ids = smollm.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        attn = np.stack([a[0].double().numpy() for a in smollm.net(input_ids=ids, output_attentions=True).attentions])
    np.testing.assert_allclose(e.scores["attention"], attn[-1, :, -1].mean(0), atol=1e-5)
    np.testing.assert_allclose(e.scores["rollout"], rollout(attn, source=ids.shape[1] - 1), atol=1e-5)


def test_flow_from_one_position_is_attention_flow():
    rng = np.random.default_rng(0)
    attn = rng.random((3, 2, 6, 6))
    attn /= attn.sum(-1, keepdims=True)
    np.testing.assert_allclose(faith.flow_scores(attn, faith.one_hot(6, 2)), attention_flow(attn, 2), atol=1e-12)


def test_flow_from_a_mix_is_a_super_source_max_flow():
    """A super-source that feeds output position i at most mix[i], checked with networkx."""
    rng = np.random.default_rng(1)
    attn = rng.random((3, 2, 5, 5))
    attn /= attn.sum(-1, keepdims=True)
    mix = np.array([0.1, 0.4, 0.2, 0.3, 0.0])
    caps = flow_capacities(attn).astype(np.float64)
    top = np.zeros((1, 5, 5))
    top[0, 0] = mix * 2 ** 24  # the source node is position 0 of the extra layer
    reference = networkx_flows(np.concatenate([caps, top]), 0)
    np.testing.assert_allclose(faith.flow_scores(attn, mix), reference / reference.sum(), atol=1e-6)


def test_rollout_scores_match_the_product_of_layers():
    rng = np.random.default_rng(2)
    attn = rng.random((4, 3, 7, 7))
    attn /= attn.sum(-1, keepdims=True)
    product = np.eye(7)
    for layer in range(4):
        product = augmented_layer(attn[layer]) @ product
    mix = rng.random(7)
    np.testing.assert_allclose(faith.rollout_scores(attn, mix), mix @ product, atol=1e-12)


# -- Spearman -------------------------------------------------------------------------------
def test_spearman_against_scipy_over_the_non_special_tokens():
    rng = np.random.default_rng(3)
    a, b = rng.random(12), rng.random(12)
    special = [True] + [False] * 10 + [True]
    assert faith.spearman(a, b, special) == pytest.approx(spearmanr(a[1:-1], b[1:-1]).statistic)
    ties = np.array([0, 1, 1, 2, 3, 3, 5, 4.0])
    assert faith.spearman(ties, b[:8], [False] * 8) == pytest.approx(spearmanr(ties, b[:8]).statistic)
    assert math.isnan(faith.spearman(np.ones(12), b, special))  # constant: no ranking
    assert math.isnan(faith.spearman(a[:4], b[:4], [True, False, False, True]))  # two tokens left


def test_explanation_spearman_uses_blankout_as_reference(minilm):
    e = explain(minilm, TEXT, methods=("attention", "rollout", "blankout"))
    rho = e.spearman()
    assert set(rho) == {"attention", "rollout"}
    keep = ~np.array(e.special)
    for m in rho:
        assert rho[m] == pytest.approx(spearmanr(e.scores[m][keep], e.scores["blankout"][keep]).statistic)


def test_summarise_gives_mean_spread_and_count():
    s = faith.summarise([{"rollout": 0.5, "flow": 0.1}, {"rollout": 0.7, "flow": math.nan}, {"rollout": 0.3}])
    assert s["rollout"].mean == pytest.approx(0.5) and s["rollout"].std == pytest.approx(np.std([0.5, 0.7, 0.3]))
    assert (s["rollout"].n, s["flow"].n, s["flow"].mean) == (3, 1, 0.1)


# -- other families ---------------------------------------------------------------------------
def test_classification_head_explains_the_class_log_probability(minilm):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=minilm.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, num_labels=3,
                        id2label={0: "neg", 1: "neu", 2: "pos"}, label2id={"neg": 0, "neu": 1, "pos": 2},
                        attn_implementation="eager")
    net = BertForSequenceClassification(config).eval()
    model = Model("tiny-classifier", "encoder", net, torch.device("cpu"), 64, tokenizer=minilm.tokenizer)
    e = explain(model, TEXT, target="pos", methods=("attention", "blankout"))
    assert e.output["class"] == "pos" and e.output["index"] == 2
    ids = minilm.tokenizer(TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logp = net(input_ids=ids).logits[0].log_softmax(-1)[2]
        blanked = ids.clone()
        blanked[0, 3] = minilm.tokenizer.mask_token_id
        drop = float(logp - net(input_ids=blanked).logits[0].log_softmax(-1)[2])
        attn = net(input_ids=ids, output_attentions=True).attentions[-1][0]
    assert e.scores["blankout"][3] == pytest.approx(drop, abs=1e-5)
    np.testing.assert_allclose(e.scores["attention"], attn[:, 0].mean(0).double().numpy(), atol=1e-6)  # the CLS row
    with pytest.raises(AttnvizError, match="Unknown class"):
        explain(model, TEXT, target="maybe", methods=("blankout",))


def test_encoder_decoder_explains_the_target_sequence(t5):
    e = explain(t5, "attention maps show where a model looks", target="Attention maps", methods=METHODS, ig_steps=4)
    assert set(e.scores) == set(METHODS) - {"globenc"} and list(e.skipped) == ["globenc"]  # T5 is pre-norm
    tok = t5.tokenizer
    src = tok("attention maps show where a model looks", return_tensors="pt")["input_ids"]
    tgt = torch.cat([torch.tensor([[t5.net.config.decoder_start_token_id]]),
                     tok("Attention maps", return_tensors="pt")["input_ids"]], dim=1)
    with torch.no_grad():
        logp = t5.net(input_ids=src, decoder_input_ids=tgt).logits[0, :-1].log_softmax(-1)
    assert e.output["log_prob"] == pytest.approx(float(logp.gather(-1, tgt[0, 1:, None]).sum()), abs=1e-4)
    assert e.scores["attention"].sum() == pytest.approx(1.0) and e.scores["blankout"][-1] == 0.0  # </s>


def test_flow_too_big_is_skipped_with_the_reason(minilm, monkeypatch):
    monkeypatch.setattr(faith, "MAX_FLOW_EDGES", 10)
    e = explain(minilm, TEXT, methods=("rollout", "flow"))
    assert "flow" not in e.scores and "too big" in e.skipped["flow"] and "rollout" in e.scores
    assert "flow" not in e.to_json()["scores"] and "flow" in e.to_json()["skipped"]


def test_wrong_inputs_are_refused(minilm, dinov2, photo):
    with pytest.raises(AttnvizError, match="image model"):
        explain(dinov2, TEXT)
    with pytest.raises(AttnvizError, match="text model"):
        explain(minilm, photo)
    with pytest.raises(AttnvizError, match="no task head"):
        explain(minilm, TEXT, target="x")
    with pytest.raises(AttnvizError, match="Unknown method"):
        explain(minilm, TEXT, methods=("saliency",))


# -- the command line -----------------------------------------------------------------------
def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "attnviz", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_cli_json_contract(minilm):
    done = cli("explain", "--model", "minilm-l6", "--text", TEXT, "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert set(out) == {"tokens", "special", "output", "scores", "spearman", "skipped"}
    assert list(out["scores"]) == list(DEFAULT_METHODS) and out["skipped"] == {}
    assert set(out["spearman"]) == set(DEFAULT_METHODS) - {"blankout"}
    n = len(out["tokens"])
    assert len(out["special"]) == n and all(len(v) == n for v in out["scores"].values())
    assert out["output"]["model"] == "minilm-l6" and out["output"]["blankout"]["replacement"] == "[MASK]"
    e = explain(minilm, TEXT, methods=("blankout",))
    assert out["tokens"] == e.tokens
    np.testing.assert_allclose(out["scores"]["blankout"], e.scores["blankout"], atol=1e-5)
    keep = ~np.array(out["special"])
    blank = np.array(out["scores"]["blankout"])[keep]
    for m, r in out["spearman"].items():
        assert r == pytest.approx(spearmanr(np.array(out["scores"][m])[keep], blank).statistic)


def test_cli_image_table(tmp_path, photo):
    path = tmp_path / "cat.png"
    photo.save(path)
    done = cli("explain", "--model", "dinov2-small", "--image", str(path), "--size", "28")
    assert done.returncode == 0, done.stderr
    assert "CLS embedding" in done.stdout and "Spearman with blank-out" in done.stdout and "(1,2)" in done.stdout


@pytest.mark.parametrize("args, words", [
    (("--model", "minilm-l6", "--text", "   "), ("empty",)),
    (("--model", "minilm-l6", "--image", "nothing.png"), ("cannot read",)),
    (("--model", "minilm-l6", "--text", "hi", "--target", "x"), ("no task head",)),
    (("--model", "no-such-model", "--text", "hi"), ("Unknown model",)),
])
def test_cli_bad_input_one_line_exit_1(args, words):
    done = cli("explain", *args)
    assert done.returncode == 1, done.stderr
    lines = [l for l in done.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and all(w in lines[0] for w in words), done.stderr


# -- the agreement task and Build-your-own models ------------------------------------------------
def test_agreement_sentences_and_their_verbs():
    from attnviz.lab.toy_tasks import ARE, IS, MASK, NOUN_PL, NOUN_SG, STOP, agreement_sentence, batch

    x, y = batch("agreement", 300, 16, np.random.default_rng(0))
    assert ((x == MASK).sum(-1) == 1).all() and x.shape == (300, 16)
    attracted = 0
    for row, answer in zip(x, y):
        nouns = row[(row == NOUN_SG) | (row == NOUN_PL)]
        verb = answer[row == MASK][0]
        assert verb == (ARE if nouns[0] == NOUN_PL else IS)
        assert (answer[row != MASK] == row[row != MASK]).all() and row[-1] == STOP
        attracted += bool((nouns[1:] != nouns[0]).any())
    assert 100 < attracted < 300  # many sentences hold a noun of the other number, not all
    assert len(agreement_sentence(5, np.random.default_rng(1))) == 5
    with pytest.raises(AttnvizError, match="at least 5"):
        agreement_sentence(4, np.random.default_rng(1))


def test_agreement_trains_in_build_your_own():
    from attnviz.lab.custom import CustomConfig, CustomNet
    from attnviz.lab.train import Trainer

    with pytest.raises(AttnvizError, match="at least 5"):
        CustomConfig(task="agreement", length=4)
    steps = Trainer(CustomNet(CustomConfig(task="agreement", length=8, n_layers=1)), seed=0).run(3)
    assert len(steps) == 3 and all(np.isfinite(s.loss) for s in steps)


@pytest.fixture(scope="module")
def agreement_model():
    from attnviz.lab.custom import CustomConfig, CustomNet

    net = CustomNet(CustomConfig(task="agreement", length=10, d_model=16, n_heads=2, n_layers=2), seed=3).eval()
    return Model("agree-tiny", "custom", net, torch.device("cpu"), 10)


def test_custom_agreement_model_blankout_attention_and_gradient_by_hand(agreement_model):
    from attnviz.lab.toy_tasks import MASK
    from attnviz.recorder import record_attention

    net = agreement_model.net
    text = "1 3 4 1 2 0 7 9 9 9"  # the keys of the key [MASK] old . . .
    e = explain(agreement_model, text, methods=METHODS[:7], ig_steps=8)  # a bare net: no tokenizer to capture with
    assert set(e.scores) == set(METHODS[:7]) and e.tokens[:6] == ["the", "keys", "of", "the", "key", "[MASK]"]
    assert e.special == [False] * 5 + [True, False, True, True, True]
    ids = torch.tensor([[int(c) for c in text.split()]])
    with torch.no_grad(), record_attention() as rec:
        logp = net(ids)[0, 5].log_softmax(-1)
    chosen = int(logp.argmax())
    assert e.output["token_id"] == chosen and e.output["position"] == 5
    expected = np.zeros(10)
    with torch.no_grad():
        for i in (0, 1, 2, 3, 4, 6):
            blanked = ids.clone()
            blanked[0, i] = MASK
            expected[i] = float(logp[chosen] - net(blanked)[0, 5].log_softmax(-1)[chosen])
    np.testing.assert_allclose(e.scores["blankout"], expected, atol=1e-5)
    # the probabilities explain differentiates are those the fused kernel uses
    np.testing.assert_allclose(e.scores["attention"], rec.maps[-1][0, :, 5].mean(0).double().numpy(), atol=1e-6)
    emb = net.tokens(ids).detach().requires_grad_()
    net.forward_embeddings(emb)[0, 5].log_softmax(-1)[chosen].backward()
    np.testing.assert_allclose(e.scores["grad_x_input"], (emb.grad * emb).sum(-1)[0].detach().numpy(), atol=1e-5)


def test_custom_model_needs_the_agreement_task_and_a_mask(agreement_model):
    from attnviz.lab.custom import CustomConfig, CustomNet

    reverse = Model("rev", "custom", CustomNet(CustomConfig(task="reverse", length=6)).eval(), torch.device("cpu"), 6)
    with pytest.raises(AttnvizError, match="agreement task"):
        explain(reverse, "1 2 3 4 5 6")
    with pytest.raises(AttnvizError, match="Mask the verb"):
        explain(agreement_model, "1 2 7 9 9 9 9 9 9 9")


def test_long_inputs_are_bounded(minilm, dinov2, photo):
    from attnviz import explain as explain_module

    e = explain(minilm, "word " * 600, methods=("attention",))
    assert len(e.tokens) == explain_module.MAX_TOKENS and "cut to the first 512" in e.warnings[0]
    with pytest.raises(AttnvizError, match="smaller input size"):
        explain(dinov2, photo, size=448, methods=("attention",))


def test_progress_counts_every_pass_up_to_the_end(minilm):
    """progress(fraction, message): after the preparing pass, the attention pass, each gradient
    pass and each blank-out batch, never going back, ending at 1; the scores are those of a run
    without it."""
    calls = []
    e = explain(minilm, TEXT, ig_steps=4, progress=lambda f, m: calls.append((f, m)))
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0) and len(calls) >= 6
    assert {m.split(" (")[0] for _, m in calls} >= {"Attention, rollout and flow", "Input x gradient",
                                                    "Integrated gradients", "Blank-out"}
    assert "Context mixing" in calls[-1][1]  # the mixing rows come last
    plain = explain(minilm, TEXT, ig_steps=4)
    for m in DEFAULT_METHODS:
        np.testing.assert_allclose(e.scores[m], plain.scores[m], atol=1e-6)


def test_a_huge_text_is_cut_before_it_is_tokenised(minilm, monkeypatch):
    """Two million zero-width joiners: cut to MAX_TOKENS tokens' worth of characters first
    (the tokenizer never sees more), then to MAX_TOKENS tokens."""
    from attnviz.capture import CHARS_PER_TOKEN
    from attnviz.explain import MAX_TOKENS

    seen = []
    tokenizer = type(minilm.tokenizer)
    real = tokenizer.__call__
    monkeypatch.setattr(tokenizer, "__call__", lambda self, text, *a, **k: seen.append(len(text)) or real(self, text, *a, **k))
    e = explain(minilm, "\u200d" * 2_000_000 + " cat", methods=("attention",))
    assert max(seen) <= MAX_TOKENS * CHARS_PER_TOKEN and len(e.tokens) <= MAX_TOKENS
    assert any("only the first" in w for w in e.warnings), e.warnings


# -- memory: the estimate against the measured peak ------------------------------------------------
@pytest.mark.parametrize("name, tokens, methods", [
    ("smollm2-135m", 256, ("attention", "rollout", "flow", "attn_x_grad")),  # the maps, their gradients, the flow graph
    ("smollm2-135m", 256, ("grad_x_input", "integrated_gradients")),  # backward passes through the fused kernel
    ("minilm-l6", 128, ("blankout",)),  # batches of blanked inputs, without gradients
    ("minilm-l6", 128, ("attention_norm", "globenc", "alti")),  # context mixing's matrices
])
def test_explain_bytes_is_at_most_a_quarter_below_the_measured_peak(name, tokens, methods):
    """attnviz.explain.explain_bytes, what a server admits explain by, is at most 25% below the
    peak RSS explain adds to a loaded model (measured in a fresh interpreter)."""
    from peaks import measured_peak

    peak, estimate = measured_peak(
        f"""
        import attnviz
        from attnviz.explain import explain, explain_bytes
        model = attnviz.load_model({name!r})
        explain(model, "A short warm-up.", methods={methods!r}, ig_steps=4)  # imports and first allocations
        ids = model.tokenizer({(TEXT + " ") * 40!r}, add_special_tokens=False)["input_ids"][:{tokens} - 2]
        text = model.tokenizer.decode(ids)
        estimate = explain_bytes(model, len(model.tokenizer(text)["input_ids"]), {methods!r}, ig_steps=4)
        """,
        f"explain(model, text, methods={methods!r}, ig_steps=4)")
    assert estimate >= 0.75 * peak, (estimate / 1e6, peak / 1e6)
