"""Baseline pruners (importing registers them)."""
