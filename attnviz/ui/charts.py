"""Every chart of the app goes through :func:`show_chart`: the plotly chart, whose camera
button saves a PNG named after what is shown, and under it a "Save figure" menu with the
same figure as high-resolution PNG, SVG and PDF for papers (rendered by attnviz.export only
when a button is clicked). :func:`result_download` offers a result's .npz and
:func:`report_button` its offline HTML report.
"""
from __future__ import annotations

import streamlit as st

import attnviz.limits as limits
from attnviz.export import MIME, PNG_SCALE, can_render, figure_bytes
from attnviz.result import AttentionResult
from attnviz.ui.common import for_this_visitor
from attnviz.viz.heatmap import png_config, safe_filename

FORMAT_LABELS = {"svg": "SVG (vector)", "pdf": "PDF (vector)", "png": f"PNG ({PNG_SCALE}× resolution)"}


def show_chart(fig, name: str, *, key: str | None = None, where=None, **kwargs):
    """``st.plotly_chart(fig)`` (in ``where``, a column or container, when given) with the
    file name ``name`` for its camera button and the SVG, PDF and PNG downloads; ``kwargs``
    go to plotly_chart (on_select, selection_mode, width...). Returns plotly_chart's value."""
    where = where or st
    event = where.plotly_chart(fig, config=png_config(name), key=key, **kwargs)
    stem = safe_filename(name)
    with where.popover("Save figure", icon=":material/download:"):
        if not _can_render():
            st.caption("SVG, PDF and high-resolution PNG need Chrome or Chromium on the server; the "
                       "camera button above the chart saves a PNG.")
            return event
        for fmt, label in FORMAT_LABELS.items():
            st.download_button(label, for_this_visitor(lambda fmt=fmt: figure_bytes(fig, fmt)), file_name=f"{stem}.{fmt}",
                               mime=MIME[fmt], on_click="ignore", key=f"fig_{fmt}_{key or stem}",
                               help="Rendered in a headless browser when clicked (a few seconds).")
    return event


@st.cache_resource(show_spinner=False)
def _can_render() -> bool:
    return can_render()


def result_download(result: AttentionResult, label: str, file_name: str, *, key: str | None = None,
                    help: str = "Every attention map and the tokens; open it with attnviz.AttentionResult.load.") -> None:
    """The download of the whole result as a .npz, built when clicked. A result larger than
    ATTNVIZ_DOWNLOAD_BYTES (attnviz.limits; 256 MB on a hosted server) is not offered: the
    button is disabled and says how to save it with attnviz itself."""
    bound = limits.budget(limits.DOWNLOAD_BYTES)
    if result.nbytes > bound:
        st.download_button(label, b"", disabled=True, key=key, icon=":material/download:",
                           help=f"This result is about {_size(result.nbytes)}, more than this server offers "
                                f"({_size(bound)}). With attnviz installed, attnviz.capture(...).save(path) "
                                "writes it; the views' .csv buttons give their numbers here.")
        return
    st.download_button(label, data=result.to_bytes, file_name=safe_filename(file_name) + ".npz",
                       mime="application/octet-stream", on_click="ignore", key=key, icon=":material/download:", help=help)


def _size(n: int) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n / 1e3:,.0f} kB"


def report_button(result: AttentionResult, key: str = "report_html") -> None:
    """A download of the result's offline report: one HTML file with the main views, the
    per-head statistics and the provenance, that opens with no network."""
    from attnviz.report import report_html

    st.download_button("Report .html", for_this_visitor(lambda: report_html(result)), file_name=safe_filename(
        f"{result.model}_report") + ".html", mime="text/html", on_click="ignore", key=key,
        icon=":material/description:", help="One self-contained HTML file (about 5 MB): the main views, "
        "every head's statistics and how the result was made. It opens offline, e.g. from an e-mail.")
