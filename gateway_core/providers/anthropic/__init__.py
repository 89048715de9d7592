"""The Anthropic Messages provider: OpenAI-dialect requests served by Claude models.

translate (pure conversion, split into messages/request/response/stream/
error_map) and client (I/O only). Nothing is imported here, so importing the
pure translator never pulls in httpx.
"""
