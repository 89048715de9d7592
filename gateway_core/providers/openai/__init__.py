"""The OpenAI chat.completions provider, for OpenAI and every OpenAI-compatible vendor.

translate (pure conversion, split into request/response/error_map) and client
(I/O only). Nothing is imported here, so importing the pure translator never
pulls in httpx.
"""
