"""Pure numpy/scipy analysis of AttentionResults: per-head statistics, rollout, attention flow.

No torch and no Streamlit here: the app, the command line and notebooks share these.
"""
from attnviz.analysis.flow import FUSIONS, attention_flow, fuse_heads, rollout
from attnviz.analysis.stats import HeadStats, StatsSpread, average_stats, head_stats

__all__ = ["FUSIONS", "HeadStats", "StatsSpread", "attention_flow", "average_stats", "fuse_heads",
           "head_stats", "rollout"]
