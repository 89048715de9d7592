"""Operability: request metrics, the access log and its redaction, OpenTelemetry tracing.

Nothing here changes what a request does; it only watches. Every piece is
wired at start (`gateway_core.server`, `gateway_core.cli`), none at import.
"""
