"""`batch --engine ray` on a local Ray instance gives the same table as `--engine local`."""
from __future__ import annotations

import pytest
from batch_inputs import sorted_table, write_jsonl

from attnviz.batch import read_table, run_batch
from attnviz.cli import main

ray = pytest.importorskip("ray")
N = 50


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_and_local_write_the_same_table(local_ray, tmp_path, minilm, capsys):
    inputs = write_jsonl(tmp_path / "in.jsonl", N)
    run_batch(minilm, inputs, tmp_path / "local", workers=1, batch_size=16)
    code = main(["batch", "--model", "minilm-l6", "--inputs", str(inputs), "--out", str(tmp_path / "ray"),
                 "--engine", "ray", "--workers", "2", "--batch-size", "16"])
    assert code == 0, capsys.readouterr().err
    assert f"{N}/{N} inputs" in capsys.readouterr().err
    local, remote = read_table(tmp_path / "local"), read_table(tmp_path / "ray")
    assert remote.num_rows == N * 6 * 12
    assert sorted_table(remote).equals(sorted_table(local))
    assert ray.is_initialized()  # a Ray instance the caller started is left running
