"""Migration scripts, oldest first; hand-written and checked against models.py by tests."""
