"""The per-head measurements the pages run as jobs (attnviz.ui.measures and the flow page's
rollouts): their memory estimates against measured peaks, and their progress."""
from __future__ import annotations

import numpy as np
import pytest

from attnviz.analysis.flow import rollout, rollout_spread

RUNS = {  # what the estimate covers: (the computation, its estimate)
    "roles": ('head_roles(r, "decoder")', 'READING_BYTES + head_roles_bytes(*r.shape("decoder")[2:])'),
    "divergence": ('head_divergence(r, "decoder", queries_within(270, r.shape("decoder")[3]))',
                   "READING_BYTES + head_divergence_bytes(270)"),
    "rollout": ('rollout(r.attn["decoder"], source=1023)',
                'READING_BYTES + rollout_bytes(9, 1024, streamed=True)'),
}


@pytest.mark.parametrize("what", list(RUNS))
def test_estimates_are_at_most_a_quarter_below_the_measured_peak(what):
    """head_roles_bytes, head_divergence_bytes and rollout_bytes (plus a lazy stack's reading
    memory and row cache, ui.measures.READING_BYTES), what the pages admit these jobs by, are
    at most 25% below the peak RSS of the computation on a recorded 1,024-token smollm2-135m
    result (measured in a fresh interpreter)."""
    from peaks import measured_peak

    run, estimate = RUNS[what]
    peak, estimate = measured_peak(
        f"""
        import attnviz
        from attnviz.capture import capture_ids
        from attnviz.analysis.flow import rollout, rollout_bytes
        from attnviz.analysis.roles import head_roles, head_roles_bytes
        from attnviz.analysis.similarity import head_divergence, head_divergence_bytes, queries_within
        from attnviz.ui.measures import READING_BYTES
        model = attnviz.load_model("smollm2-135m")
        r = capture_ids(model, [(i * 7919) % 40000 + 100 for i in range(1024)])
        head_roles(attnviz.capture(model, "A warm-up text."), "decoder")
        rollout(r.attn["decoder"][:, :, :16, :16], source=15)
        estimate = {estimate}
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the system: what runs next must grow the RSS
        """, run)
    assert peak > 30e6  # rows and distances, not noise
    assert estimate >= 0.75 * peak, (estimate / 1e6, peak / 1e6)


def test_rollouts_report_progress_after_each_layer():
    rng = np.random.default_rng(0)
    attn = rng.random((4, 2, 6, 6))
    attn /= attn.sum(-1, keepdims=True)
    for run in (lambda p: rollout(attn, source=5, progress=p), lambda p: rollout(attn, discard_ratio=0.5, progress=p),
                lambda p: rollout_spread(attn, 5, progress=p)):
        seen: list[float] = []
        run(seen.append)
        assert seen == [0.25, 0.5, 0.75, 1.0]
    np.testing.assert_allclose(rollout(attn, source=5, progress=lambda f: None), rollout(attn)[5])
