"""The head atlas page in AppTest on real models: the atlas, similar heads, compare, and the
atlas and "over many inputs" reading batch tables. Figures are read back from their JSON and
checked against the same analysis run here."""
from __future__ import annotations

import numpy as np
import pytest
from apptest_tools import MemoryTaken, array, assert_clean, charts, open_page
from batch_inputs import write_jsonl
from streamlit.testing.v1 import AppTest
from test_compare import checkpoints  # noqa: F401  (a fixture)

import attnviz
import attnviz.jobs as jobs
from attnviz.analysis.roles import all_roles
from attnviz.analysis.similarity import cluster_heads, head_divergence, mean_divergence
from attnviz.batch import part_files, read_table, roles_from_table, run_batch, spread_from_table
from attnviz.compare import align_inputs, align_models, same_head_divergence
from attnviz.ui.inputs import DEFAULT_TEXT
from attnviz.ui.measures import DIVERGENCES, PROBES, ROLES

PAGE = "pages/heads.py"


def atlas_labels(fig: dict) -> np.ndarray:
    """The label of each head from the atlas's hover text, ``[layers, heads]``."""
    marks = fig["data"][1]
    layers, heads = array(marks["y"]).astype(int), array(marks["x"]).astype(int)
    out = np.empty((layers.max() + 1, heads.max() + 1), dtype=object)
    for l, h, text in zip(layers, heads, marks["hovertext"]):
        out[l, h] = text.split("<b>")[1].split("</b>")[0]
    return out


@pytest.fixture(scope="module")
def page() -> AppTest:
    at = open_page(PAGE, model="minilm-l6")
    assert_clean(at)
    return at


@pytest.fixture(scope="module")
def result(minilm):
    return attnviz.capture(minilm, DEFAULT_TEXT)


def test_atlas_labels_follow_the_scores_and_the_threshold(page, result):
    roles = all_roles(result)["encoder"]
    fig = charts(page)["heads_atlas"]
    np.testing.assert_array_equal(atlas_labels(fig), roles.labels(0.3))
    assert "previous_token" in fig["data"][1]["hovertext"][0] and "entropy" in fig["data"][1]["hovertext"][0]
    page.slider(key="heads_threshold").set_value(0.6).run()
    assert_clean(page)
    np.testing.assert_array_equal(atlas_labels(charts(page)["heads_atlas"]), roles.labels(0.6))


def test_induction_probe_atlas_on_smollm():
    """The probe's capture and scores run as a job of the visitor: it waits in line, with its
    place on the page, while the server's memory is taken."""
    at = open_page(PAGE, model="smollm2-135m")
    at.radio(key="heads_source").set_value("probe").run()
    PROBES.clear()
    with MemoryTaken(release_when_waiting="Running the induction probe") as taken:
        at.number_input(key="heads_period").set_value(30).run()
    assert ("Running the induction probe on smollm2-135m", jobs.QUEUED, 1, True) in taken.seen
    assert_clean(at)
    labels = atlas_labels(charts(at)["heads_atlas"])
    assert (labels == "induction").sum() >= 3 and (labels == "previous_token").sum() >= 3


def test_similar_heads(page, result, minilm):
    page.query_params["heads_view"] = "Similar heads"
    page.run()
    page.selectbox(key="heads_like").set_value(2 * 12 + 7).run()
    assert_clean(page)
    d = head_divergence(result, "encoder")
    clusters = cluster_heads(d, 12)
    fig = charts(page)["heads_clustered"]
    heat = next(t for t in fig["data"] if t["type"] == "heatmap")
    np.testing.assert_allclose(array(heat["z"]), d[np.ix_(clusters.order, clusters.order)], atol=1e-6)
    table = page.dataframe[0].value
    nearest = np.argsort(d[2 * 12 + 7])[1]
    assert table["head"][0] == clusters.name(nearest)
    other = "Heads that look alike on one text may part on another."
    page.text_area(key="heads_more_texts").set_value(other).run()
    assert_clean(page)
    mean = mean_divergence([result, attnviz.capture(minilm, other)], "encoder")
    order = cluster_heads(mean, 12).order
    heat = next(t for t in charts(page)["heads_clustered"]["data"] if t["type"] == "heatmap")
    np.testing.assert_allclose(array(heat["z"]), mean[np.ix_(order, order)], atol=1e-6)
    assert "over 2 texts" in charts(page)["heads_clustered"]["layout"]["title"]["subtitle"]["text"]


def test_compare_two_models_and_two_texts(page, result, minilm, smollm):
    page.query_params["heads_view"] = "Compare"
    page.run()
    page.selectbox(key="compare_model").set_value("minilm-l6").run()  # a model against itself: 0 everywhere
    assert_clean(page)
    grid = array(charts(page)["compare_per_head"]["data"][0]["z"])
    assert grid.shape == (6, 12) and np.all(grid < 1e-6)
    page.selectbox(key="compare_model").set_value("smollm2-135m").run()
    page.number_input(key="compare_b_layer").set_value(3).run()
    assert_clean(page)
    got = charts(page)
    aligned = align_models(minilm, result, smollm, attnviz.capture(smollm, DEFAULT_TEXT), DEFAULT_TEXT)
    maps = got["compare_maps"]["data"]
    np.testing.assert_allclose(array(maps[1]["z"]), aligned.b[3, 0], atol=1e-6)
    np.testing.assert_allclose(array(got["compare_difference"]["data"][0]["z"]), aligned.a[0, 0] - aligned.b[3, 0],
                               atol=1e-6)
    assert "closest head" in got["compare_per_head"]["layout"]["title"]["text"]
    page.radio(key="compare_mode").set_value("inputs").run()
    assert_clean(page)
    b = "The animal didn't cross the river because it was too wide."
    same = align_inputs(minilm, result, DEFAULT_TEXT, attnviz.capture(minilm, b), b)
    np.testing.assert_allclose(array(charts(page)["compare_per_head"]["data"][0]["z"]), same_head_divergence(same),
                               atol=1e-6)


def test_atlas_and_many_inputs_read_a_batch_table(tmp_path, minilm):
    out = tmp_path / "stats.parquet"
    run_batch(minilm, write_jsonl(tmp_path / "in.jsonl", 6), out, workers=1, batch_size=4)
    files = [(p.name, p.read_bytes(), "application/octet-stream") for p in part_files(out)]
    assert len(files) == 2
    table = read_table(out)
    at = open_page(PAGE, model="minilm-l6")
    at.radio(key="heads_source").set_value("table").run()
    at.file_uploader(key="heads_table").set_value(files).run()
    assert_clean(at)
    fig = charts(at)["heads_atlas"]
    np.testing.assert_array_equal(atlas_labels(fig), roles_from_table(table, "encoder").labels(0.3))
    assert "mean over 6 inputs" in fig["layout"]["title"]["subtitle"]["text"]

    flow = open_page("pages/flow.py", kind="text", model="minilm-l6", view="many")
    flow.file_uploader(key="flow_many_table").set_value(files).run()
    assert_clean(flow)
    spread = spread_from_table(table, "encoder")
    dots = charts(flow)["flow_many_depth"]["data"][0]
    np.testing.assert_allclose(array(dots["y"]), spread.mean.mean_distance.ravel(), rtol=1e-6)


def test_compare_two_checkpoints(checkpoints):  # noqa: F811  (the fixture imported above)
    at = open_page(PAGE, model=checkpoints[0])
    assert_clean(at)
    at.query_params["heads_view"] = "Compare"
    at.run()
    at.selectbox(key="compare_model").set_value("a folder or hub id…").run()
    at.text_input(key="compare_own").set_value(checkpoints[1]).run()
    assert_clean(at)
    got = charts(at)
    a, b = (attnviz.load_model(f) for f in checkpoints)
    aligned = align_models(a, attnviz.capture(a, DEFAULT_TEXT), b, attnviz.capture(b, DEFAULT_TEXT), DEFAULT_TEXT)
    np.testing.assert_allclose(array(got["compare_per_head"]["data"][0]["z"]), same_head_divergence(aligned), atol=1e-6)
    assert "same head of B" in got["compare_per_head"]["layout"]["title"]["text"]


def test_role_scores_and_head_divergences_are_jobs_that_wait_in_line_and_are_shared(result):
    """Scoring every head and comparing every pair of heads read the whole stack (on an
    8,192-token text as long as the overview), so each runs as a job of the visitor: while the
    server's memory is taken it waits in line, with its place on the page, and goes on when
    the memory is free; a second session then reads both from the shared cache, with no job."""
    at = open_page(PAGE, model="minilm-l6")  # the capture, cached for every session
    ROLES.clear()
    DIVERGENCES.clear()
    with MemoryTaken(release_when_waiting="Scoring every head") as taken:
        at.run()
    assert_clean(at)
    assert ("Scoring every head of minilm-l6", jobs.QUEUED, 1, True) in taken.seen
    np.testing.assert_array_equal(atlas_labels(charts(at)["heads_atlas"]), all_roles(result)["encoder"].labels(0.3))
    with MemoryTaken(release_when_waiting="Comparing every pair") as taken:
        at.query_params["heads_view"] = "Similar heads"
        at.run()
    assert_clean(at)
    assert ("Comparing every pair of heads of minilm-l6", jobs.QUEUED, 1, True) in taken.seen
    with MemoryTaken() as taken:
        other = open_page(PAGE, model="minilm-l6", heads_view="Similar heads")
        other.query_params["heads_view"] = "Atlas"
        other.run()
    assert_clean(other)
    assert taken.seen == []
