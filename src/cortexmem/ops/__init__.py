"""Operators: one folder per op, ``naive.py`` (the specification) beside its fast paths."""
