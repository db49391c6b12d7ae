"""Corpus runs: every input of a JSONL file or a folder captured, and per input and per head
the statistics (attnviz.analysis.stats) and role scores (attnviz.analysis.roles) written to
Parquet.

The output ``stats.parquet`` is a folder of Parquet parts (``part-<first input>.parquet``), one
per batch, which pyarrow, pandas and DuckDB read as one table
(``pyarrow.parquet.read_table("stats.parquet")``). One row per input, stack, layer and head;
the columns are :data:`SCHEMA`. A part is written to a hidden temporary file and renamed, so
an interrupted run leaves only whole parts; ``resume`` skips the inputs already in a part.
``_job.json`` in the folder records the model and window, and a resumed run must match them.

Inputs:

- a ``.jsonl`` file: one JSON value per line, a string (the text) or an object with
  ``"text"`` and optionally ``"id"``, ``"pair"`` (a second segment, encoders) and ``"target"``
  (encoder-decoders). The id defaults to the line number (from 1). Blank lines are skipped.
- a folder: every ``.txt``/``.md`` file (text models) or image file (image models) under it,
  in sorted order; the id is the path relative to the folder.

Only one batch (``batch_size`` inputs) is held by the driver at a time, and each worker holds
the attention of one input at a time. Engines: ``local`` runs ``workers`` processes on this
machine (one model each; in this process when ``workers`` is 1); ``ray`` runs ``workers``
Ray actors (one model each, one GPU each when the cluster has GPUs) on the cluster that
``ray.init(address)`` reaches. Every worker computes with ``threads`` torch threads, so both
engines give the same numbers.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

import attnviz.families as families
from attnviz.analysis.roles import SHARE_ROLES, share_roles
from attnviz.analysis.stats import ARRAY_FIELDS, head_stats
from attnviz.errors import AttnvizError

FORMAT = 1
JOB_FILE = "_job.json"
DEFAULT_BATCH = 32
TEXT_SUFFIXES = (".txt", ".md")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
ENGINES = ("local", "ray")
ID_COLUMNS = ("input_index", "input_id", "model", "kind", "window", "stack", "layer", "head", "n_queries", "n_keys")
VALUE_COLUMNS = ARRAY_FIELDS + SHARE_ROLES
Progress = Callable[[int, int, float], None]  # (inputs done, inputs in all, inputs per second)


def schema():
    """The Parquet columns: ``input_index`` (position in the input list), ``input_id``,
    ``model``, ``kind`` ("text" or "image"), ``window`` (of the local statistics), ``stack``,
    ``layer``, ``head``, ``n_queries`` and ``n_keys`` of the stack, then
    the statistics (entropy, entropy_norm, sink_mass, mean_distance, local_share,
    distance_ratio) and share roles (previous_token, self, first_token, special, delimiter) as
    float64, NaN where undefined."""
    import pyarrow as pa

    ints = {"input_index": pa.int64(), "window": pa.int32(), "layer": pa.int32(), "head": pa.int32(), "n_queries": pa.int32(),
            "n_keys": pa.int32()}
    return pa.schema([(c, ints.get(c, pa.string())) for c in ID_COLUMNS] + [(c, pa.float64()) for c in VALUE_COLUMNS])


@dataclass(frozen=True)
class Item:
    """One input: its ``index`` in the list, its ``id``, and either the ``text`` (with an
    optional ``pair`` or ``target``) or the ``path`` of a file the worker reads."""

    index: int
    id: str
    text: str | None = None
    pair: str | None = None
    target: str | None = None
    path: str | None = None


# -- inputs ----------------------------------------------------------------------------------
def read_inputs(source: Path, family: str) -> Iterator[Item]:
    """The inputs of a ``.jsonl`` file or a folder, in order (see the module docstring)."""
    source = Path(source)
    if source.is_dir():
        images = families.get(family).READS == "image"
        suffixes = IMAGE_SUFFIXES if images else TEXT_SUFFIXES
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        if not files:
            raise AttnvizError(f"{source} holds no {'/'.join(suffixes)} files")
        for i, p in enumerate(files):
            yield Item(index=i, id=p.relative_to(source).as_posix(), path=str(p))
        return
    if not source.is_file():
        raise AttnvizError(f"{source} is neither a .jsonl file nor a folder")
    if families.get(family).READS == "image":
        raise AttnvizError("an image model reads a folder of images, not a .jsonl file")
    index = 0
    with open(source, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise AttnvizError(f"{source}, line {number}: not JSON ({e.msg})") from None
            if isinstance(value, str):
                value = {"text": value}
            if not isinstance(value, dict) or not isinstance(value.get("text"), str):
                raise AttnvizError(f"{source}, line {number}: expected a string or an object with \"text\"")
            yield Item(index=index, id=str(value.get("id", number)), text=value["text"],
                       pair=value.get("pair"), target=value.get("target"))
            index += 1


def _checked_ids(items: Iterable[Item]) -> int:
    """The number of inputs; raises when two share an id."""
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise AttnvizError(f"two inputs have the id {item.id!r}; ids must be unique")
        seen.add(item.id)
    return len(seen)


# -- one input -------------------------------------------------------------------------------
def item_input(item: Item, family: str):
    """What attnviz.capture takes for ``item``: a text, a pair, or an image."""
    from attnviz.inputs import open_image, read_text

    if item.path is not None:
        data = Path(item.path).read_bytes()
        return open_image(data, item.id) if families.get(family).READS == "image" else read_text(data, item.id)
    return (item.text, item.pair) if item.pair else item.text


def input_rows(model, item: Item, window: int) -> dict[str, list]:
    """Capture ``item`` and return its rows, one per stack, layer and head, as columns."""
    from attnviz.capture import capture

    result = capture(model, item_input(item, model.family), target=item.target)
    cols: dict[str, list] = {c: [] for c in ID_COLUMNS + VALUE_COLUMNS}
    for stack in result.stacks:
        n_layers, n_heads, n_q, n_k = result.shape(stack)
        stats = head_stats(result, stack, window=window)
        roles = share_roles(result, stack)
        layer, head = np.divmod(np.arange(n_layers * n_heads), n_heads)
        n = n_layers * n_heads
        cols["input_index"] += [item.index] * n
        cols["input_id"] += [item.id] * n
        cols["model"] += [result.model] * n
        cols["kind"] += [result.kind] * n
        cols["window"] += [window] * n
        cols["stack"] += [stack] * n
        cols["layer"] += layer.tolist()
        cols["head"] += head.tolist()
        cols["n_queries"] += [n_q] * n
        cols["n_keys"] += [n_k] * n
        for name in ARRAY_FIELDS:
            cols[name] += getattr(stats, name).ravel().tolist()
        for name in SHARE_ROLES:
            cols[name] += roles[name].ravel().tolist()
    return cols


@dataclass
class BatchOutput:
    """What a worker gives back for one batch: its first input's index, the rows as columns,
    and (id, message) for each input that could not be read or run."""

    first: int
    columns: dict[str, list]
    failed: list[tuple[str, str]] = field(default_factory=list)
    count: int = 0


def run_items(model, items: list[Item], window: int) -> BatchOutput:
    """Rows of every input of one batch; an input that fails is reported, not fatal."""
    out = BatchOutput(first=items[0].index, columns={c: [] for c in ID_COLUMNS + VALUE_COLUMNS}, count=len(items))
    for item in items:
        try:
            rows = input_rows(model, item, window)
        except (AttnvizError, OSError, ValueError) as e:
            out.failed.append((item.id, str(e).splitlines()[0] if str(e) else type(e).__name__))
            continue
        for c, values in rows.items():
            out.columns[c] += values
    return out


# -- the parts on disk -----------------------------------------------------------------------
def part_files(out: Path) -> list[Path]:
    return sorted(Path(out).glob("part-*.parquet"))


def done_ids(out: Path) -> set[str]:
    """The ids of the inputs already written under ``out``."""
    import pyarrow.parquet as pq

    done: set[str] = set()
    for p in part_files(out):
        done.update(pq.read_table(p, columns=["input_id"]).column("input_id").to_pylist())
    return done


def write_part(out: Path, batch: BatchOutput) -> Path | None:
    """Write one batch's rows as ``part-<first index>.parquet`` (via a temporary file and a
    rename, so a part is there whole or not at all). None when the batch has no rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not batch.columns["input_id"]:
        return None
    path = Path(out) / f"part-{batch.first:09d}.parquet"
    tmp = Path(out) / f".{path.name}.tmp"
    pq.write_table(pa.Table.from_pydict(batch.columns, schema=schema()), tmp)
    os.replace(tmp, path)
    return path


def read_table(out: Path):
    """Every part under ``out`` as one pyarrow Table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = part_files(out)
    if not parts:
        raise AttnvizError(f"{out} holds no batch results (part-*.parquet)")
    return pa.concat_tables([pq.read_table(p, schema=schema()) for p in parts])


def _matrix(table, column: str, shape: tuple[int, int]) -> np.ndarray:
    """``[inputs, layers, heads]`` of one column of a table sorted by input, layer and head."""
    return np.asarray(table.column(column).to_numpy(zero_copy_only=False), dtype=np.float64).reshape(-1, *shape)


def stack_rows(table, stack: str, model: str | None = None):
    """The rows of one stack (and model, when a table holds several), sorted by input, layer,
    head, with ``(layers, heads)``; raises when the inputs do not all have every head."""
    import pyarrow.compute as pc

    models = sorted(set(table.column("model").to_pylist()))
    if model is None:
        if len(models) != 1:
            raise AttnvizError(f"the table holds several models ({', '.join(models)}); choose one")
        model = models[0]
    rows = table.filter(pc.and_(pc.equal(table["stack"], stack), pc.equal(table["model"], model)))
    if rows.num_rows == 0:
        raise AttnvizError(f"the table has no {stack!r} rows of {model}")
    rows = rows.sort_by([("input_index", "ascending"), ("layer", "ascending"), ("head", "ascending")])
    shape = (int(pc.max(rows["layer"]).as_py()) + 1, int(pc.max(rows["head"]).as_py()) + 1)
    if rows.num_rows % (shape[0] * shape[1]):
        raise AttnvizError("the table's inputs do not all have every layer and head")
    return rows, shape


def spread_from_table(table, stack: str, model: str | None = None):
    """The statistics of every input in a batch table, averaged (attnviz.analysis.stats.StatsSpread)."""
    from attnviz.analysis.stats import HeadStats, average_stats

    rows, shape = stack_rows(table, stack, model)
    values = {name: _matrix(rows, name, shape) for name in ARRAY_FIELDS}
    kind = rows["kind"][0].as_py()
    window = int(rows["window"][0].as_py())
    with np.errstate(invalid="ignore", divide="ignore"):
        uniform = np.nanmean((values["mean_distance"] / values["distance_ratio"]).reshape(len(values["entropy"]), -1), 1)
    per_input = [HeadStats(stack=stack, kind=kind, distance_unit="px" if kind == "image" else "tokens", window=window,
                           window_unit="patches" if kind == "image" else "tokens", uniform_distance=float(uniform[i]),
                           **{name: v[i] for name, v in values.items()}) for i in range(len(uniform))]
    return average_stats(per_input)


def roles_from_table(table, stack: str, model: str | None = None):
    """Each head's role scores averaged over the inputs of a batch table (NaNs ignored), as
    attnviz.analysis.roles.HeadRoles (without induction, which needs the probe input)."""
    from attnviz.analysis.roles import STAT_ROLES, HeadRoles

    rows, shape = stack_rows(table, stack, model)
    columns = {name: name for name in SHARE_ROLES} | dict(STAT_ROLES)  # role -> column
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a head that is NaN for every input stays NaN
        scores = {role: np.nanmean(_matrix(rows, column, shape), 0) for role, column in columns.items()}
    return HeadRoles(stack=stack, scores=scores)


def read_uploaded(files: list[tuple[str, bytes]]):
    """Batch parts given as (name, bytes) (uploads) as one table; a file that is not one of
    ours is refused with its name."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for name, data in files:
        try:
            tables.append(pq.read_table(pa.BufferReader(data), schema=schema()))
        except (pa.ArrowException, OSError, ValueError) as e:
            raise AttnvizError(f"{name} is not a part of an attnviz batch table: {str(e).splitlines()[0]}") from None
    if not tables:
        raise AttnvizError("no batch files given")
    return pa.concat_tables(tables)


def _prepare(out: Path, job: dict, resume: bool) -> None:
    out = Path(out)
    job_file = out / JOB_FILE
    if out.exists() and not out.is_dir():
        raise AttnvizError(f"{out} is a file; --out names a folder of Parquet parts")
    if out.is_dir() and any(out.iterdir()):
        if not resume:
            raise AttnvizError(f"{out} already exists; add --resume to continue that run, or remove it")
        if job_file.is_file():
            before = json.loads(job_file.read_text())
            for key in ("model", "window", "format"):
                if before.get(key) != job[key]:
                    raise AttnvizError(f"{out} was written with {key}={before.get(key)!r}, not {job[key]!r}; "
                                       "resume with the same options or write elsewhere")
        for stale in out.glob(".part-*.tmp"):  # a part that was being written when the run stopped
            stale.unlink()
    out.mkdir(parents=True, exist_ok=True)
    job_file.write_text(json.dumps(job))


# -- the run ---------------------------------------------------------------------------------
@dataclass
class Summary:
    """What a run did: inputs in all, already done before it, run now, failed (id, message),
    parts written, seconds."""

    total: int
    skipped: int
    processed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    parts: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


def run_batch(model, inputs: Path, out: Path, *, engine: str = "local", resume: bool = False,
              batch_size: int = DEFAULT_BATCH, workers: int | None = None, window: int = 2,
              threads: int = 1, address: str | None = None, progress: Progress | None = None) -> Summary:
    """Run ``model`` (a name, folder or hub id; or a loaded Model for the local engine with one
    worker) over ``inputs`` and write the rows under ``out`` (see the module docstring)."""
    from attnviz.models.loader import Model, load_model

    if engine not in ENGINES:
        raise AttnvizError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if batch_size < 1 or window < 0 or threads < 1 or (workers is not None and workers < 1):
        raise AttnvizError("--batch-size, --workers and threads must be >= 1, --window >= 0")
    loaded = model if isinstance(model, Model) else None
    name = loaded.name if loaded else str(model)
    if workers is None and engine == "local":
        workers = os.cpu_count() or 1
    if engine == "local" and workers == 1 and loaded is None:
        loaded = load_model(name)
    family = loaded.family if loaded else _family_of(name)
    total = _checked_ids(read_inputs(inputs, family))
    _prepare(out, {"format": FORMAT, "model": name, "window": window, "inputs": str(inputs)}, resume)
    done = done_ids(out) if resume else set()
    summary = Summary(total=total, skipped=len(done))
    batches = _batches((i for i in read_inputs(inputs, family) if i.id not in done), batch_size)
    started = time.perf_counter()
    if engine == "ray":
        outputs = _ray_outputs(name, batches, workers, window, threads, address)
    elif workers == 1:
        outputs = _local_outputs(loaded, batches, window, threads)
    else:
        outputs = _pool_outputs(name, batches, workers, window, threads)
    for output in outputs:
        summary.parts += write_part(out, output) is not None
        summary.processed += output.count
        summary.failed += output.failed
        summary.seconds = time.perf_counter() - started
        if progress is not None:
            progress(summary.skipped + summary.processed, total, summary.rate)
    summary.seconds = time.perf_counter() - started
    return summary


def _family_of(name: str) -> str:
    """The family of a model without loading its weights in this process (only its config)."""
    from attnviz.models.bundled import BUNDLED

    if name in BUNDLED:
        return BUNDLED[name].family
    from attnviz.models.loader import load_model

    return load_model(name).family


def _batches(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _local_outputs(model, batches: Iterator[list[Item]], window: int, threads: int) -> Iterator[BatchOutput]:
    from attnviz.device import cpu_threads

    for batch in batches:
        with cpu_threads(threads):
            output = run_items(model, batch, window)
        yield output


_WORKER_MODEL = None  # the model of a local worker process


def _pool_init(name: str, threads: int) -> None:
    import torch

    from attnviz.models.loader import load_model

    global _WORKER_MODEL
    torch.set_num_threads(threads)
    _WORKER_MODEL = load_model(name)


def _pool_run(batch: list[Item], window: int) -> BatchOutput:
    return run_items(_WORKER_MODEL, batch, window)


def _pool_outputs(name: str, batches: Iterator[list[Item]], workers: int, window: int,
                  threads: int) -> Iterator[BatchOutput]:
    """Batches run by ``workers`` processes, at most one batch per worker in flight."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # a forked torch can hang
    with ctx.Pool(workers, initializer=_pool_init, initargs=(name, threads)) as pool:
        pending = []
        for batch in batches:
            pending.append(pool.apply_async(_pool_run, (batch, window)))
            if len(pending) >= workers:
                yield pending.pop(0).get()
        for job in pending:
            yield job.get()


class _RayWorker:
    """A Ray actor holding one model."""

    def __init__(self, name: str, window: int, threads: int):
        import torch

        from attnviz.models.loader import load_model

        torch.set_num_threads(threads)
        self.model = load_model(name)
        self.window = window

    def run(self, batch: list[Item]) -> BatchOutput:
        return run_items(self.model, batch, self.window)


def _ray_outputs(name: str, batches: Iterator[list[Item]], workers: int | None, window: int, threads: int,
                 address: str | None) -> Iterator[BatchOutput]:
    """Batches run by Ray actors, one model each, at most one batch per actor in flight."""
    try:
        import ray
    except ImportError:
        raise AttnvizError("--engine ray needs Ray: pip install 'ray[default]' (or use --engine local)") from None
    started_here = not ray.is_initialized()  # else the caller's ray.init made attnviz importable there
    if started_here:
        kwargs = {"include_dashboard": False} if address is None else {}
        runtime_env = {"py_modules": [str(Path(__file__).resolve().parent)]}  # attnviz itself, for remote workers
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, **kwargs)
    actors = []
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        count = workers or (gpus if gpus else max(1, int(resources.get("CPU", 1)) // threads))
        actor = ray.remote(num_cpus=threads, num_gpus=1 if gpus else 0)(_RayWorker)
        actors = [actor.remote(name, window, threads) for _ in range(count)]
        free, pending = list(actors), {}
        while True:
            while free:
                batch = next(batches, None)
                if batch is None:
                    break
                worker = free.pop()
                pending[worker.run.remote(batch)] = worker
            if not pending:
                break
            ready, _ = ray.wait(list(pending), num_returns=1)
            free.append(pending.pop(ready[0]))
            yield ray.get(ready[0])
    finally:
        for a in actors:
            ray.kill(a)
        if started_here:
            ray.shutdown()
