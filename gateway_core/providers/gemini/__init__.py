"""The Gemini generateContent provider (Google AI Studio's Gemini API).

translate (pure conversion, split into request/response/stream/error_map and
the call_ids scheme that carries thought signatures) and client (I/O only).
Nothing is imported here, so importing the pure translator never pulls in httpx.
"""
