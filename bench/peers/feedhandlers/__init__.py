"""Scenario (f) peers: Python feed handlers on the ingest feed (see common.py)."""
