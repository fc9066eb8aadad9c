"""Synthetic extracts for demos, tests and benchmarks: one population, four source formats.

Only synthetic people: NHS numbers from the 999 test range with valid check digits.
"""
