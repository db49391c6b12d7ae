"""Streamlit building blocks that the pages compose. The only package below pages/ that
imports Streamlit."""
