"""Measurements that read every head of a result, for the pages: per-head statistics (the flow
and image pages), role scores and the divergence of every pair of heads (the head atlas, and
the induction probe's capture and scores), the CLS rollout of the image explorer.

On a long input each reads the whole stack (on an 8,192-token text as long as the overview of
every head), so each runs as a job of the visitor (ui.common.cached_job: admitted for its
memory, a step per layer or block of queries, with a progress bar), once per result (named by
its digest), kept in a cache bounded by bytes and shared by sessions.
"""
from __future__ import annotations

import numpy as np

import attnviz.limits as limits
from attnviz.analysis.flow import rollout, rollout_bytes
from attnviz.analysis.roles import HeadRoles, head_roles, head_roles_bytes
from attnviz.analysis.similarity import head_divergence, head_divergence_bytes
from attnviz.analysis.stats import ARRAY_FIELDS, HeadStats, head_stats, head_stats_bytes
from attnviz.cache import ByteCache
from attnviz.lazy import CACHE_BYTES, READ_BYTES
from attnviz.models.loader import Model
from attnviz.probes import induction_bytes, induction_roles
from attnviz.result import AttentionResult
from attnviz.ui.common import cached_job

MEASURES_CACHE_BYTES = 16 << 20  # each cache below: per-head scores of recent results, all sessions together
READING_BYTES = READ_BYTES + CACHE_BYTES  # reading every head of a lazy stack: its working memory and the rows it keeps

STATS: ByteCache[HeadStats] = ByteCache(lambda: MEASURES_CACHE_BYTES,
                                        lambda s: sum(getattr(s, f).nbytes for f in ARRAY_FIELDS))
ROLES: ByteCache[HeadRoles] = ByteCache(lambda: MEASURES_CACHE_BYTES, lambda r: sum(v.nbytes for v in r.scores.values()))
DIVERGENCES: ByteCache[np.ndarray] = ByteCache(lambda: MEASURES_CACHE_BYTES, lambda d: d.nbytes)
ROLLOUTS: ByteCache[np.ndarray] = ByteCache(lambda: MEASURES_CACHE_BYTES, lambda r: r.nbytes)
PROBES: ByteCache[tuple[AttentionResult, dict[str, HeadRoles]]] = ByteCache(  # captures: an eighth of the result cache
    lambda: limits.budget(limits.CACHE_BYTES) // 8,
    lambda p: p[0].nbytes + sum(v.nbytes for roles in p[1].values() for v in roles.scores.values()))


def stats_of(result: AttentionResult, stack: str, window: int = 2) -> HeadStats:
    """attnviz.analysis.stats.head_stats of ``result``'s ``stack`` with the local ``window``."""
    _, _, n_q, n_k = result.shape(stack)
    return cached_job(STATS, (result.digest, stack, window), f"Statistics of every head of {result.model}",
                      READING_BYTES + head_stats_bytes(n_q, n_k),
                      lambda progress: head_stats(result, stack, window=window, progress=progress))


def roles_of(result: AttentionResult, stack: str) -> HeadRoles:
    """attnviz.analysis.roles.head_roles of ``result``'s ``stack`` (every head is read twice)."""
    _, _, n_q, n_k = result.shape(stack)
    return cached_job(ROLES, (result.digest, stack), f"Scoring every head of {result.model}",
                      READING_BYTES + head_roles_bytes(n_q, n_k),
                      lambda progress: head_roles(result, stack, progress=progress))


def probe_of(model: Model, period: int, seed: int) -> tuple[AttentionResult, dict[str, HeadRoles]]:
    """attnviz.probes.induction_roles of ``model``: the capture of ``period`` random tokens
    repeated twice (``seed``) and the role scores of every stack."""
    return cached_job(PROBES, (model.name, period, seed), f"Running the induction probe on {model.name}",
                      READING_BYTES + induction_bytes(model, period),
                      lambda progress: induction_roles(model, period, seed, progress=progress))


def divergence_of(result: AttentionResult, stack: str, queries: int) -> np.ndarray:
    """attnviz.analysis.similarity.head_divergence of ``result``'s ``stack`` over ``queries``
    evenly spaced queries."""
    n_layers, n_heads = result.shape(stack)[:2]
    return cached_job(DIVERGENCES, (result.digest, stack, queries), f"Comparing every pair of heads of {result.model}",
                      READING_BYTES + head_divergence_bytes(n_layers * n_heads),
                      lambda progress: head_divergence(result, stack, queries, progress))


def cls_rollout_of(result: AttentionResult, layer: int, fusion: str, discard: float) -> np.ndarray:
    """Row 0 (CLS) of the rollout (attnviz.analysis.flow.rollout) of ``result``'s encoder
    through layers 0..``layer``: float64 ``[keys]``; with ``discard`` > 0 each layer is read
    whole."""
    attn = result.attn["encoder"]
    need = READING_BYTES + rollout_bytes(attn.shape[1], attn.shape[-1], streamed=not discard)
    return cached_job(ROLLOUTS, (result.digest, layer, fusion, discard), f"Rolling out {result.model}", need,
                      lambda progress: rollout(attn, fusion, discard, source=0, layers=layer + 1, progress=progress))
