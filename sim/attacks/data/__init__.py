"""Data-poisoning attacks: one file per attack, registered in `registry.py` (docs/architecture.md)."""
