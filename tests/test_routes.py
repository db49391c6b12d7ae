"""Information-flow routes (attnviz.analysis.routes, attnviz.viz.routes) against direct
computations: the kept edges by a graph search in networkx over every edge at or above the
threshold, shares by the explicit matrix product, the routed share by summing over every path,
and a hand-made graph worked out by hand (docs/routes.md has the definitions)."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from PIL import Image

from attnviz import figures
from attnviz.analysis.flow import fuse_heads
from attnviz.analysis.routes import MAX_EDGES, default_threshold, layer_matrices, routes, routes_json
from attnviz.errors import AttnvizError
from attnviz.result import PatchGrid
from attnviz.viz.routes import EDGE_HOVER, GAPS, MAX_DRAWN_EDGES, NODES, columns, routes_figure

ROOT = Path(__file__).resolve().parents[1]

# -- direct computations ----------------------------------------------------------------------


def random_mixing(rng, layers, n, causal=False):
    """Row-stochastic ``[layers, n, n]`` float32 with a heavy diagonal, as a mixing method's."""
    a = rng.gamma(0.3, size=(layers, n, n)) + 2.0 * np.eye(n) * rng.random((layers, n, 1))
    if causal:
        a = a * np.tril(np.ones((n, n)))
    return (a / a.sum(-1, keepdims=True)).astype(np.float32)


def direct_matrices(m, method):
    """M' row by row: rownorm(0.5 M + 0.5 I) for attention and attention_norm, M otherwise."""
    out = np.array(m, dtype=np.float64)
    if method in ("attention", "attention_norm"):
        for layer in range(out.shape[0]):
            for i in range(out.shape[1]):
                row = 0.5 * out[layer, i]
                row[i] += 0.5
                out[layer, i] = row / row.sum()
    return out


def networkx_routes(mp, outputs, threshold):
    """(kept edges as a set of (l, i, j), kept nodes as a set of (layer, token)): every edge
    (l, j) -> (l + 1, i) of weight >= threshold, kept when its target is an output or has a
    path up to one (an ancestor of an output node in the graph of those edges)."""
    n_layers, n, _ = mp.shape
    g = nx.DiGraph()
    g.add_nodes_from((layer, t) for layer in range(n_layers + 1) for t in range(n))
    for layer, i, j in zip(*np.nonzero(mp >= threshold)):
        g.add_edge((layer, j), (layer + 1, i))
    reach = {(n_layers, o) for o in outputs}
    for o in outputs:
        reach |= nx.ancestors(g, (n_layers, o))
    edges = {(a[0], b[1], a[1]) for a, b in g.edges if b in reach}
    nodes = {(n_layers, o) for o in outputs} | {(layer, j) for layer, _, j in edges}
    return edges, nodes


def path_sum(mp, outputs, kept):
    """Routed share of each input token, summed over every path from an output down to it
    that uses only kept edges: mean over outputs of the product of the edge weights."""
    n_layers, n, _ = mp.shape
    out = np.zeros(n)
    for o in outputs:
        for path in itertools.product(range(n), repeat=n_layers):  # tokens at layers 0..L-1
            tokens = list(path) + [o]
            if all((layer, tokens[layer + 1], tokens[layer]) in kept for layer in range(n_layers)):
                out[tokens[0]] += np.prod([mp[layer, tokens[layer + 1], tokens[layer]] for layer in range(n_layers)])
    return out / len(outputs)


# -- the analysis -------------------------------------------------------------------------------
HAND = np.array([[[1.0, 0.0, 0.0], [0.3, 0.7, 0.0], [0.1, 0.2, 0.7]],
                 [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.05, 0.15, 0.8]]])


def test_hand_made_routes_follow_only_what_reaches_the_output():
    low = routes(HAND, "alti", 2, threshold=0.1)
    assert low.edges.tolist() == [[0, 1, 0], [0, 1, 1], [0, 2, 0], [0, 2, 1], [0, 2, 2], [1, 2, 1], [1, 2, 2]]
    np.testing.assert_allclose(low.weights, [0.3, 0.7, 0.1, 0.2, 0.7, 0.15, 0.8])
    assert low.kept_nodes.tolist() == [[True, True, True], [False, True, True], [False, False, True]]
    np.testing.assert_allclose(low.shares, [[0.175, 0.265, 0.56], [0.05, 0.15, 0.8], [0, 0, 1]])
    high = routes(HAND, "alti", 2, threshold=0.2)  # (1,1) drops out, and with it 0.3 and 0.7 below it
    assert high.edges.tolist() == [[0, 2, 1], [0, 2, 2], [1, 2, 2]]
    assert high.idle_tokens().tolist() == [True, False, False]
    np.testing.assert_allclose(high.routed, [0.0, 0.16, 0.56])
    np.testing.assert_allclose(high.shares, low.shares)  # shares follow every edge


@pytest.mark.parametrize("method", ["alti", "attention_norm"])
@pytest.mark.parametrize("causal", [False, True])
def test_kept_edges_are_those_at_or_above_the_threshold_that_connect_to_the_output(method, causal):
    rng = np.random.default_rng(3)
    m = random_mixing(rng, 4, 9, causal)
    mp = direct_matrices(m, method)
    for outputs in ([8], [0, 4], list(range(9))):
        for threshold in (0.02, 0.08, 0.2, float(mp[2, 5, 3])):  # the last: a weight exactly at it is kept
            r = routes(m, method, outputs, threshold=threshold)
            edges, nodes = networkx_routes(mp, outputs, threshold)
            assert {tuple(e) for e in r.edges.tolist()} == edges
            assert r.edges.tolist() == sorted(r.edges.tolist())
            assert {(int(a), int(b)) for a, b in zip(*np.nonzero(r.kept_nodes))} == nodes
            np.testing.assert_allclose(r.weights, [mp[l, i, j] for l, i, j in r.edges.tolist()])
            mix = np.zeros(9)
            mix[outputs] = 1 / len(outputs)
            for layer in range(5):
                np.testing.assert_allclose(r.shares[layer], np.linalg.multi_dot([mix[None], *mp[layer:][::-1], np.eye(9)])[0],
                                           atol=1e-12)
            if causal:
                assert all(j <= i for _, i, j in r.edges.tolist())


def test_routed_share_sums_over_the_kept_paths():
    rng = np.random.default_rng(5)
    m = random_mixing(rng, 3, 4)
    mp = direct_matrices(m, "attention")
    for outputs, threshold in (([3], 0.1), ([0, 1, 2, 3], 0.15), ([2], 0.3)):
        r = routes(m, "attention", outputs, threshold=threshold)
        kept = {tuple(e) for e in r.edges.tolist()}
        np.testing.assert_allclose(r.routed, path_sum(mp, outputs, kept), atol=1e-12)
        assert r.routed.sum() <= 1 + 1e-12
    tiny = routes(m, "attention", [1], threshold=1e-9)  # every edge kept: the routed share is the rollout
    np.testing.assert_allclose(tiny.routed, tiny.shares[0], atol=1e-12)


def test_pooled_output_starts_from_the_mean_of_every_row():
    rng = np.random.default_rng(7)
    m = random_mixing(rng, 3, 6)
    r = routes(m, "globenc", range(6), threshold=0.05)
    np.testing.assert_allclose(r.shares[3], np.full(6, 1 / 6))
    np.testing.assert_allclose(r.shares[0], np.full(6, 1 / 6) @ m[2].astype(np.float64) @ m[1] @ m[0], rtol=1e-6)
    assert r.kept_nodes[3].all()
    assert routes_json(r, list("abcdef"))["output"] == {"rows": [0, 1, 2, 3, 4, 5], "pooled": True}


def test_per_head_contributions_travel_with_each_edge():
    rng = np.random.default_rng(11)
    m = random_mixing(rng, 3, 7)
    heads = rng.random((3, 5, 7, 7)).astype(np.float32)
    r = routes(m, "alti", 6, threshold=0.05, heads=heads)
    doc = json.loads(json.dumps(routes_json(r, [f"t{k}" for k in range(7)])))
    assert doc["edges"]
    for edge in doc["edges"]:
        (l, j), (up, i) = edge["from"], edge["to"]
        assert up == l + 1
        assert edge["heads"] == pytest.approx({str(h): float(heads[l, h, i, j]) for h in range(5)})
        assert edge["weight"] == pytest.approx(float(m[l, i, j]))
    bare = routes_json(routes(m, "value_zeroing", 6, threshold=0.05), [f"t{k}" for k in range(7)])
    assert all(e["heads"] == {} for e in bare["edges"])


def test_json_follows_the_contract():
    r = routes(HAND, "alti", [2], threshold=0.2)
    doc = routes_json(r, ["a", "b", "c"], {"what": "next token"})
    assert list(doc) == ["method", "threshold", "output", "tokens", "nodes", "edges"]
    assert doc["method"] == "alti" and doc["threshold"] == 0.2 and doc["tokens"] == ["a", "b", "c"]
    assert doc["output"] == {"rows": [2], "pooled": False, "what": "next token"}
    assert doc["nodes"] == [{"layer": 0, "token": 1, "share": pytest.approx(0.265)},
                            {"layer": 0, "token": 2, "share": pytest.approx(0.56)},
                            {"layer": 1, "token": 2, "share": pytest.approx(0.8)},
                            {"layer": 2, "token": 2, "share": pytest.approx(1.0)}]
    assert doc["edges"][0] == {"from": [0, 1], "to": [1, 2], "weight": pytest.approx(0.2), "heads": {}}
    assert [set(e) for e in doc["edges"]] == [{"from", "to", "weight", "heads"}] * 3
    json.dumps(doc)


@pytest.mark.parametrize("outputs", [[0], [19], list(range(20))])
def test_default_threshold_keeps_about_five_percent_of_the_edges(outputs):
    rng = np.random.default_rng(13)
    m = random_mixing(rng, 6, 20)
    mp = direct_matrices(m, "alti")
    target = round(0.05 * mp.size)
    t = default_threshold(mp, np.array(outputs))
    kept = len(networkx_routes(mp, outputs, t)[0])
    above = mp[mp > t].min()  # the next weight up keeps fewer than the target
    assert kept >= target > len(networkx_routes(mp, outputs, above)[0])
    assert kept <= 1.3 * target
    r = routes(m, "alti", outputs)
    assert r.threshold == t and len(r.edges) == kept
    capped = routes(m, "alti", outputs, max_edges=20)  # the smallest weight keeping at most 20
    below = mp[mp < capped.threshold].max()
    assert len(capped.edges) <= 20 < len(networkx_routes(mp, outputs, below)[0])


def test_augmented_methods_add_the_residual_and_the_others_do_not():
    rng = np.random.default_rng(17)
    m = random_mixing(rng, 2, 5)
    for method in ("attention", "attention_norm", "alti", "globenc", "value_zeroing"):
        np.testing.assert_allclose(layer_matrices(m, method), direct_matrices(m, method), rtol=1e-12)


@pytest.mark.parametrize("call, message", [
    (lambda m: routes(m, "rollout", 0), "Routes follow one of"),
    (lambda m: routes(-m, "alti", 0), "negative or non-finite"),
    (lambda m: routes(m[0], "alti", 0), "one square matrix per layer"),
    (lambda m: routes(m, "alti", 0, threshold=0), "in (0, 1]"),
    (lambda m: routes(m, "alti", 0, threshold=1.5), "in (0, 1]"),
    (lambda m: routes(m, "alti", 5), "out of range"),
    (lambda m: routes(m, "alti", [1, 1]), "repeat"),
    (lambda m: routes(m, "alti", 0, heads=np.zeros((2, 2, 3, 4))), "Per-head contributions"),
    (lambda m: routes(np.broadcast_to(np.eye(600), (30, 600, 600)), "alti", 0), f"at most {MAX_EDGES:,}"),
    (lambda m: routes(np.zeros((2, 5, 5)), "alti", 0), "Every weight is 0"),
])
def test_bad_input_gets_one_clear_message(call, message):
    m = random_mixing(np.random.default_rng(0), 2, 5)
    with pytest.raises(AttnvizError, match=message.replace("(", r"\(").replace("]", r"\]")):
        call(m)


# -- the figure ---------------------------------------------------------------------------------
def test_collapsed_runs_become_thin_gaps():
    x, runs = columns(np.array([False, True, True, False, True, False]))
    assert [a for a, b, _ in runs] == [1, 4] and [b for a, b, _ in runs] == [2, 4]
    assert x[0] == 0 and x[3] == pytest.approx(1.4) and x[5] == pytest.approx(2.8)
    assert x[1] == x[2] == pytest.approx(0.7)  # the run's centre, between its neighbours


def traces(fig, name):
    return [t for t in fig.data if t.name == name]


def test_figure_draws_every_kept_edge_and_node():
    rng = np.random.default_rng(19)
    m = random_mixing(rng, 4, 12)
    heads = rng.random((4, 3, 12, 12))
    r = routes(m, "alti", 11, threshold=0.12, heads=heads)
    fig = routes_figure(r, [f"tok{k}" for k in range(12)], title="test")
    lines = [t for t in fig.data if t.mode == "lines"]
    assert sum(np.count_nonzero(np.isnan(np.asarray(t.x, dtype=float))) for t in lines) == len(r.edges)
    (hover,), (nodes,) = traces(fig, EDGE_HOVER), traces(fig, NODES)
    assert len(hover.x) == len(r.edges) and all("heads h" in t for t in hover.text)
    assert len(nodes.x) == int(r.kept_nodes.sum())
    assert {tuple(c) for c in np.asarray(nodes.customdata).tolist()} == {
        (int(a), int(b)) for a, b in zip(*np.nonzero(r.kept_nodes))}
    idle = r.idle_tokens()
    runs = int(np.sum(idle[1:] & ~idle[:-1]) + idle[0])
    assert len(traces(fig, GAPS)[0].x if runs else []) == runs
    bare = routes_figure(routes(m, "globenc", 11, threshold=0.12), [f"tok{k}" for k in range(12)])
    assert all("no per-head values" in t for t in traces(bare, EDGE_HOVER)[0].text)


def test_image_routes_show_the_photo_and_the_grid_rows():
    rng = np.random.default_rng(23)
    grid = PatchGrid(rows=3, cols=4, patch_px=14, prefix=1)
    m = random_mixing(rng, 2, 13)
    r = routes(m, "alti", 0, threshold=0.05)
    photo = Image.fromarray(rng.integers(0, 255, (42, 56, 3), dtype=np.uint8))
    fig = routes_figure(r, ["[CLS]"] + [f"({a},{b})" for a in range(3) for b in range(4)], photo=photo, grid=grid)
    assert len(fig.layout.images) == 1 and fig.layout.images[0].source.startswith("data:image/jpeg;base64,")
    assert len([s for s in fig.layout.shapes if s.type == "line"]) == grid.rows - 1


def test_too_many_edges_to_draw_is_refused():
    m = np.full((2, 180, 180), 1 / 180)
    r = routes(m, "alti", list(range(180)), threshold=1 / 200)
    assert len(r.edges) > MAX_DRAWN_EDGES
    with pytest.raises(AttnvizError, match="raise the threshold"):
        routes_figure(r, ["t"] * 180)


def test_notebook_routes_follow_the_captured_attention(minilm):
    import attnviz

    result = attnviz.capture(minilm, "The cat sat on the mat because it was warm.")
    attn = np.asarray(result.attn["encoder"], dtype=np.float64)
    mp = direct_matrices(np.stack([fuse_heads(a) for a in attn]), "attention")
    fig = figures.routes(result, token=0, threshold=0.05)
    edges, nodes = networkx_routes(mp, [0], 0.05)
    assert len(traces(fig, EDGE_HOVER)[0].x) == len(edges)
    assert len(traces(fig, NODES)[0].x) == len(nodes)
    pooled = figures.routes(result, pooled=True, threshold=0.05)
    assert len(traces(pooled, EDGE_HOVER)[0].x) == len(networkx_routes(mp, range(attn.shape[-1]), 0.05)[0])


# -- the command line, against a direct computation on tiny models ---------------------------------
def routes_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "attnviz", "routes", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory):
    y, x = np.mgrid[0:40, 0:60]
    path = tmp_path_factory.mktemp("routes-photo") / "photo.png"
    Image.fromarray(np.stack([x * 4, y * 6, (x + y) * 2], -1).clip(0, 255).astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize("label, method, output, threshold", [
    ("test-bert", "alti", "default", None),  # every token, per-head ALTI
    ("test-bert", "globenc", "2", "0.05"),  # one token, no per-head values
    ("test-gpt2", "attention_norm", "default", None),  # the last token, attention x value norm per head
    ("test-vit", "alti", "pooled", "0.02"),
])
def test_the_command_keeps_exactly_the_edges_that_reach_the_output(tiny_folders, photo_file, label, method, output,
                                                                   threshold):
    import attnviz

    folder = str(tiny_folders[label])
    source = ["--image", str(photo_file)] if label == "test-vit" else ["--text", "The cat sat on the mat because it was warm."]
    done = routes_cli("--model", folder, *source, "--method", method, "--output", output,
                      *(["--threshold", threshold] if threshold else []), "--json")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert list(got) == ["method", "threshold", "output", "tokens", "nodes", "edges"]

    model = attnviz.load_model(folder)
    input = Image.open(photo_file) if label == "test-vit" else "The cat sat on the mat because it was warm."
    result = attnviz.capture(model, input)
    mixed = attnviz.mixing(model, input, methods=(method,), result=result)
    n = len(mixed.tokens)
    rows = {"default": {"test-bert": list(range(n)), "test-gpt2": [n - 1]}.get(label), "pooled": list(range(n)),
            "2": [2]}[output]
    assert got["method"] == method and got["tokens"] == mixed.tokens and got["output"]["rows"] == rows
    mp = direct_matrices(mixed.matrices[method], method)
    if threshold:
        assert got["threshold"] == float(threshold)
    else:  # the default keeps about 5% of the L x N x N edges
        assert 0.01 * mp.size <= len(got["edges"]) <= 0.2 * mp.size
    edges, nodes = networkx_routes(mp, rows, got["threshold"])
    assert edges, "the threshold keeps no edge: the test would prove nothing"
    assert {(e["from"][0], e["to"][1], e["from"][1]) for e in got["edges"]} == edges
    assert all(e["to"][0] == e["from"][0] + 1 for e in got["edges"])
    assert {(v["layer"], v["token"]) for v in got["nodes"]} == nodes
    shares = [np.zeros(n) for _ in range(mp.shape[0] + 1)]
    shares[-1][rows] = 1 / len(rows)
    for layer in reversed(range(mp.shape[0])):
        shares[layer] = shares[layer + 1] @ mp[layer]
    for v in got["nodes"]:
        assert v["share"] == pytest.approx(shares[v["layer"]][v["token"]], rel=1e-9, abs=1e-12)
    heads = mixed.value_norms.shape[1]
    for e in got["edges"]:
        (layer, j), (_, i) = e["from"], e["to"]
        assert e["weight"] == pytest.approx(mp[layer, i, j], rel=1e-12)
        if method == "alti":
            expected = mixed.alti_heads[layer, :, i, j]
        elif method == "attention_norm":
            expected = [result.attention(layer, h)[i, j] * mixed.value_norms[layer, h, j] for h in range(heads)]
        else:
            assert e["heads"] == {}
            continue
        assert list(e["heads"]) == [str(h) for h in range(heads)]
        np.testing.assert_allclose(list(e["heads"].values()), expected, rtol=1e-5)


@pytest.mark.parametrize("args, words", [
    (["--method", "rollout"], ["Unknown mixing method 'rollout'"]),
    (["--threshold", "0"], ["threshold", "(0, 1]"]),
    (["--output", "first"], ["--output is default, pooled or a token index"]),
    (["--output", "99"], ["Output token 99 is out of range"]),
])
def test_the_command_refuses_bad_input_in_one_line(tiny_folders, args, words):
    done = routes_cli("--model", str(tiny_folders["test-bert"]), "--text", "The cat sat.", *args, "--json")
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr, done.stderr
    assert all(w in lines[0] for w in words), lines[0]


@pytest.mark.parametrize("label", ["test-bert", "test-gpt2", "test-vit"])
def test_default_output_rows_are_the_rows_explain_reads(tiny_folders, photo_file, label):
    import attnviz
    from attnviz.explain import default_output_rows, problem_for

    model = attnviz.load_model(str(tiny_folders[label]))
    p = problem_for(model, Image.open(photo_file) if label == "test-vit" else "The cat sat on the mat.")
    mix = p.mix(None, None)[0]
    assert default_output_rows(model, p.tokens) == np.flatnonzero(mix).tolist()
