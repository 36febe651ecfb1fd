"""Benchmark loaders, official-compatible scorers, judges, reports."""
