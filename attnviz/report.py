"""An offline report of one AttentionResult: a single self-contained HTML file.

plotly.js is inlined once (about 4.7 MB), every figure's data travels inside the page, and
pictures are ``data:`` URIs, so the file opens from an e-mail attachment on a machine with no
network: it references nothing outside itself. It holds the main views of the result (built
by attnviz.figures, the same as the app draws), the per-head statistics of every
self-attention stack, and the provenance: model, attnviz version, input digest, timings.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import html
import platform

import numpy as np
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

import attnviz.figures as figures
import attnviz.jobs as jobs
from attnviz.analysis.stats import head_stats
from attnviz.lazy import READ_BYTES
from attnviz.result import AttentionResult
from attnviz.viz.image import data_uri

REPORT_BYTES = READ_BYTES + 200 * 10**6  # reading heads, the figures' data and the page (plotly.js: 4.7 MB), generous
CONFIG = {"displaylogo": False, "responsive": True}  # no "Produced with Plotly" link
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #222; padding: 0 1rem; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85rem; }
td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: right; }
th { background: #f4f4f4; } td.k, th.k { text-align: left; }
.note { color: #666; font-size: 0.9rem; } figure { margin: 1rem 0; } img { max-width: 100%; }
"""


def input_digest(result: AttentionResult) -> str:
    """SHA-256 of what the model read: the tokens (and target tokens) and the picture's pixels."""
    h = hashlib.sha256(result.model.encode())
    h.update("\x00".join(result.tokens).encode())
    h.update(b"\x01" + "\x00".join(result.target_tokens or []).encode())
    if result.image is not None:
        h.update(np.ascontiguousarray(result.image).tobytes())
    return h.hexdigest()


def report_html(result: AttentionResult, *, source: str | None = None) -> str:
    """The whole report as one HTML string; ``source`` names the file the result came from.
    Built as a job (attnviz.jobs, admitted for REPORT_BYTES), each view and table a step."""
    import attnviz

    with jobs.within(f"The report of {result.model}", REPORT_BYTES) as job:
        sections = [_provenance(result, source, attnviz.__version__)]
        for title, view in _views(result):
            sections.append(f"<h2>{html.escape(title)}</h2>\n{view}")
            job.checkpoint()
        for stack in result.stacks:
            if stack != "cross":
                sections.append(_stats_table(result, stack))
                job.checkpoint()
    title = f"attnviz report · {result.model}"
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style>"
            f"<script type=\"text/javascript\">{get_plotlyjs()}</script></head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n")


def _views(result: AttentionResult) -> list[tuple[str, str]]:
    """(title, HTML) of each view in the report."""
    stack = result.stacks[0]
    self_stack = next(s for s in result.stacks if s != "cross")
    out = []
    if result.kind == "image":
        picture = figures.overlay(result)
        out.append(("Where CLS looks: last layer, mean of heads",
                    f'<figure><img alt="CLS attention on the picture" src="{data_uri(picture)}"></figure>'))
        out.append(("Rollout from CLS", _div(figures.rollout(result))))
    else:
        out.append((f"Rollout from token {figures.source_token(result, self_stack, None)}, as highlighted text",
                    _div(figures.highlight(result, stack=self_stack))))
        out.append(("Head heatmap: last layer, mean of heads", _div(figures.heatmap(result, stack=stack))))
        if "cross" in result.stacks:
            out.append(("Cross-attention: last layer, mean of heads", _div(figures.heatmap(result, stack="cross"))))
        out.append(("Rollout", _div(figures.rollout(result, stack=self_stack))))
    for s in result.stacks:
        out.append((f"Every layer × head ({s})", _div(figures.overview(result, stack=s))))
    out.append((f"Mean attention distance against depth ({self_stack})",
                _div(figures.distance(result, stack=self_stack))))
    return out


def _div(fig: go.Figure) -> str:
    return "<figure>" + fig.to_html(full_html=False, include_plotlyjs=False, config=CONFIG) + "</figure>"


def _provenance(result: AttentionResult, source: str | None, version: str) -> str:
    import torch
    import transformers

    shapes = "; ".join(f"{s} {' × '.join(map(str, result.attn[s].shape))} [layers, heads, queries, keys]"
                       for s in result.stacks)
    what = (f"{result.image.shape[1]} × {result.image.shape[0]} px picture, {result.grid.rows} × "
            f"{result.grid.cols} patches" if result.kind == "image" and result.image is not None
            else f"{len(result.tokens)} tokens" + (f" + {len(result.target_tokens)} target tokens"
                                                   if result.target_tokens else ""))
    rows = [("model", result.model), ("input", f"{result.kind}: {what}"), ("attention maps", shapes),
            ("input digest (SHA-256)", input_digest(result))]
    if source:
        rows.append(("result file", source))
    rows += [(f"timing: {k}", f"{v:.3f} s") for k, v in result.timings.items()]
    rows += [("attnviz", version), ("torch / transformers", f"{torch.__version__} / {transformers.__version__}"),
             ("python", platform.python_version()),
             ("report written", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))]
    rows += [("warning", w) for w in result.warnings]
    body = "\n".join(f'<tr><th class="k">{html.escape(k)}</th><td class="k">{html.escape(str(v))}</td></tr>'
                     for k, v in rows)
    return f"<h2>Provenance</h2>\n<table>\n{body}\n</table>"


def _stats_table(result: AttentionResult, stack: str) -> str:
    stats = head_stats(result, stack)
    classes = stats.classes()
    head = ("layer", "head", "entropy (nats)", "entropy / max", f"mean distance ({stats.distance_unit})",
            "sink mass", f"share within {stats.window} {stats.window_unit}", "class")
    rows = []
    for layer in range(stats.n_layers):
        for h in range(stats.n_heads):
            values = (stats.entropy[layer, h], stats.entropy_norm[layer, h], stats.mean_distance[layer, h],
                      stats.sink_mass[layer, h], stats.local_share[layer, h])
            cells = [str(layer), str(h), *(f"{v:.3f}" for v in values), classes[layer, h]]
            rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return (f"<h2>Per-head statistics ({html.escape(stack)})</h2>\n"
            f'<p class="note">Special tokens are left out of entropy and distance (rows renormalised); their '
            f"share is the sink mass. A uniform head's mean distance is {stats.uniform_distance:.2f} "
            f"{stats.distance_unit}.</p>\n<table>\n<tr>"
            + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>\n" + "\n".join(rows) + "\n</table>")
