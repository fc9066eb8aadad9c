"""Opt-outs, the disclosure decision, its cache and the tamper-evident log."""
