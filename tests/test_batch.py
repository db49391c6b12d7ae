"""`batch` with the local engine: the Parquet rows, resuming an interrupted run, the inputs."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from batch_inputs import sentences, sorted_table, write_jsonl

import attnviz
from attnviz.analysis.roles import share_roles
from attnviz.analysis.stats import head_stats
from attnviz.batch import done_ids, read_inputs, read_table, run_batch, schema
from attnviz.cli import main

N = 50


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, minilm):
    """One uninterrupted run over N inputs, in this process."""
    tmp = tmp_path_factory.mktemp("batch")
    inputs = write_jsonl(tmp / "in.jsonl", N)
    summary = run_batch(minilm, inputs, tmp / "stats.parquet", workers=1, batch_size=8)
    return inputs, tmp / "stats.parquet", summary


def test_rows_are_the_statistics_and_roles_of_each_input(full_run, minilm):
    inputs, out, summary = full_run
    assert (summary.total, summary.processed, summary.parts, summary.failed) == (N, N, 7, [])
    table = read_table(out)
    assert table.schema.equals(schema())
    assert table.num_rows == N * 6 * 12
    assert pq.read_table(out).num_rows == N * 6 * 12  # the folder reads as one table
    ids = [item.id for item in read_inputs(inputs, "encoder")]
    assert ids[:4] == ["s0", "2", "3", "s3"]
    assert set(table.column("input_id").to_pylist()) == set(ids)
    rows = sorted_table(table).to_pydict()
    text = sentences(N)[3]
    result = attnviz.capture(minilm, text)
    stats, roles = head_stats(result, "encoder"), share_roles(result, "encoder")
    at = [i for i, v in enumerate(rows["input_id"]) if v == "s3"]
    assert len(at) == 72 and rows["layer"][at[13]] == 1 and rows["head"][at[13]] == 1
    assert rows["n_queries"][at[0]] == len(result.tokens)
    np.testing.assert_array_equal([rows["mean_distance"][i] for i in at], stats.mean_distance.ravel())
    np.testing.assert_array_equal([rows["previous_token"][i] for i in at], roles["previous_token"].ravel())
    np.testing.assert_array_equal([rows["special"][i] for i in at], roles["special"].ravel())


def test_an_interrupted_run_resumed_gives_the_same_table(full_run, minilm, tmp_path):
    inputs, reference, _ = full_run
    out = tmp_path / "stats.parquet"

    def stop_after_two_parts(done, total, rate):
        if done >= 16:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_batch(minilm, inputs, out, workers=1, batch_size=8, progress=stop_after_two_parts)
    assert len(done_ids(out)) == 16
    (out / ".part-000000016.parquet.tmp").write_bytes(b"half a part")  # killed while writing
    with pytest.raises(attnviz.AttnvizError, match="--resume"):
        run_batch(minilm, inputs, out, workers=1, batch_size=8)
    with pytest.raises(attnviz.AttnvizError, match="window"):
        run_batch(minilm, inputs, out, workers=1, batch_size=8, resume=True, window=3)
    summary = run_batch(minilm, inputs, out, workers=1, batch_size=8, resume=True)
    assert (summary.skipped, summary.processed) == (16, N - 16)
    assert not list(out.glob("*.tmp"))
    assert sorted_table(read_table(out)).equals(sorted_table(read_table(reference)))


def test_a_folder_of_texts_and_failing_inputs(tmp_path, minilm):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("First text.", encoding="utf-8")
    (folder / "sub" / "b.md").write_text("# Second\n\ntext", encoding="utf-8")
    (folder / "empty.txt").write_text("   ", encoding="utf-8")
    (folder / "skip.csv").write_text("not read", encoding="utf-8")
    summary = run_batch(minilm, folder, tmp_path / "out", workers=1)
    assert [f[0] for f in summary.failed] == ["empty.txt"] and "empty" in summary.failed[0][1]
    assert sorted(done_ids(tmp_path / "out")) == ["a.txt", "sub/b.md"]


def test_local_processes(tmp_path, minilm):
    inputs = write_jsonl(tmp_path / "in.jsonl", 6)
    run_batch("minilm-l6", inputs, tmp_path / "pool", workers=2, batch_size=2)
    run_batch(minilm, inputs, tmp_path / "one", workers=1, batch_size=4)
    assert sorted_table(read_table(tmp_path / "pool")).equals(sorted_table(read_table(tmp_path / "one")))


@pytest.mark.parametrize("lines, words", [
    (['"a"', '"b"', '{"id": "2", "text": "c"}'], "two inputs have the id '2'"),
    (['{"txt": "x"}'], 'line 1: expected a string or an object with "text"'),
    (["not json"], "line 1: not JSON"),
])
def test_bad_inputs(tmp_path, capsys, lines, words):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    code = main(["batch", "--model", "minilm-l6", "--inputs", str(path), "--out", str(tmp_path / "o")])
    assert code == 1 and words in capsys.readouterr().err


def test_cli(tmp_path, capsys):
    inputs = write_jsonl(tmp_path / "in.jsonl", 3)
    out = tmp_path / "stats.parquet"
    assert main(["batch", "--model", "minilm-l6", "--inputs", str(inputs), "--out", str(out), "--workers", "1"]) == 0
    captured = capsys.readouterr()
    assert "3/3 inputs" in captured.err and "wrote" in captured.out
    assert json.loads((out / "_job.json").read_text())["model"] == "minilm-l6"
    assert main(["batch", "--model", "minilm-l6", "--inputs", str(inputs), "--out", str(out), "--resume",
                 "--workers", "1"]) == 0
    assert "0 inputs in 0 parts (3 done before" in capsys.readouterr().out


def test_images_and_encoder_decoders(tmp_path, dinov2, t5):
    from attnviz.samples import SAMPLES, sample_bytes

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in list(SAMPLES)[:2]:
        (folder / f"{name}.png").write_bytes(sample_bytes(name))
    run_batch(dinov2, folder, tmp_path / "img", workers=1)
    table = read_table(tmp_path / "img")
    assert table.num_rows == 2 * 12 * 6 and set(table.column("kind").to_pylist()) == {"image"}
    assert all(d > 0 for d in table.column("mean_distance").to_pylist())  # pixels on the patch grid

    inputs = tmp_path / "pairs.jsonl"
    inputs.write_text(json.dumps({"text": "The cat sat on the mat.", "target": "A cat."}) + "\n", encoding="utf-8")
    run_batch(t5, inputs, tmp_path / "t5", workers=1)
    rows = read_table(tmp_path / "t5").to_pydict()
    assert sorted(set(rows["stack"])) == ["cross", "decoder", "encoder"] and len(rows["stack"]) == 3 * 8 * 6
    cross = [i for i, s in enumerate(rows["stack"]) if s == "cross"]
    assert all(np.isnan(rows["previous_token"][i]) and not np.isnan(rows["first_token"][i]) for i in cross)


def test_ray_missing_gives_one_line(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    inputs = write_jsonl(tmp_path / "in.jsonl", 2)
    code = main(["batch", "--model", "minilm-l6", "--inputs", str(inputs), "--out", str(tmp_path / "o"),
                 "--engine", "ray"])
    assert code == 1 and "--engine ray needs Ray" in capsys.readouterr().err


def test_a_killed_process_resumed_gives_the_same_table(tmp_path, minilm):
    import subprocess
    import sys
    import time

    from conftest import ROOT

    inputs = write_jsonl(tmp_path / "in.jsonl", 40)  # enough that the kill lands mid-run on a fast machine
    out = tmp_path / "killed.parquet"
    proc = subprocess.Popen([sys.executable, "-m", "attnviz", "batch", "--model", "minilm-l6", "--inputs", str(inputs),
                             "--out", str(out), "--workers", "1", "--batch-size", "2"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while len(list(out.glob("part-*.parquet"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.kill()  # SIGKILL: no clean-up of any kind
        proc.wait()
    written = len(done_ids(out))
    assert 4 <= written < 40, written
    summary = run_batch(minilm, inputs, out, workers=1, batch_size=2, resume=True)
    assert summary.skipped == written and summary.processed == 40 - written
    run_batch(minilm, inputs, tmp_path / "whole.parquet", workers=1, batch_size=16)
    assert sorted_table(read_table(out)).equals(sorted_table(read_table(tmp_path / "whole.parquet")))
