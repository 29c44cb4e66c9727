"""Helpers shared by the test modules: a running system, event builders, waiting on a condition, clocks."""
