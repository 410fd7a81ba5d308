"""Scoring a finished store: per-row metrics, aggregates, the merge step, text reports."""
