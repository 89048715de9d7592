"""Alembic migrations for the Tollgate store (run through gateway_core.store.migrate)."""
