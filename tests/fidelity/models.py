"""Filled in by the fidelity suite."""
