"""The configuration `tollgate serve` runs on when no file is given."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Public list prices (USD per 1M tokens: input, output, cached input) when this
# was written; operators should check them against their provider's price page.
_OPENAI_MODELS = {
    "gpt-4o-mini": (0.15, 0.60, 0.075),
    "gpt-4o": (2.50, 10.00, 1.25),
    "gpt-4.1-mini": (0.40, 1.60, 0.10),
}
_ANTHROPIC_MODELS = {
    "claude-sonnet-4-5": (3.00, 15.00, 0.30),
    "claude-haiku-4-5": (1.00, 5.00, 0.10),
}
_GEMINI_MODELS = {
    "gemini-2.5-flash": (0.30, 2.50, 0.075),
    "gemini-2.5-pro": (1.25, 10.00, 0.3125),
}


def _env_providers(env: Mapping[str, str]) -> list[dict[str, Any]]:
    """A provider and its models for each usual API-key variable that is set."""
    found: list[dict[str, Any]] = []
    for variable, type_, base_env, catalogue in (
        ("OPENAI_API_KEY", "openai", "OPENAI_BASE_URL", _OPENAI_MODELS),
        ("ANTHROPIC_API_KEY", "anthropic", "ANTHROPIC_BASE_URL", _ANTHROPIC_MODELS),
        ("GEMINI_API_KEY", "gemini", "GEMINI_BASE_URL", _GEMINI_MODELS),
    ):
        if not env.get(variable):
            continue
        settings: dict[str, Any] = {"name": type_, "type": type_, "api_key": "${" + variable + "}"}
        if env.get(base_env):
            settings["base_url"] = env[base_env]
        found.append({"settings": settings, "models": catalogue})
    return found


def embedded_defaults(env: Mapping[str, str]) -> dict[str, Any]:
    """The configuration `tollgate serve` runs on without a file.

    The offline mock provider always; real providers when their usual
    environment variable holds a key. TOLLGATE_HTTP_ADDRESS,
    TOLLGATE_GRPC_ADDRESS and TOLLGATE_DATABASE_URL override the addresses
    and the database.
    """
    providers: list[dict[str, Any]] = [{"name": "mock", "type": "mock"}]
    models: list[dict[str, Any]] = [
        {"name": "mock-chat", "routes": [{"provider": "mock", "model": "chat"}], "input_price": 0.10, "output_price": 0.40},
        {"name": "mock-echo", "routes": [{"provider": "mock", "model": "echo"}], "input_price": 0.05, "output_price": 0.20},
    ]
    for provider in _env_providers(env):
        providers.append(provider["settings"])
        models += [
            {"name": name, "routes": [{"provider": provider["settings"]["name"], "model": name}],
             "input_price": p_in, "output_price": p_out, "cached_input_price": p_cached}
            for name, (p_in, p_out, p_cached) in provider["models"].items()
        ]
    return {
        "server": {
            "http_address": env.get("TOLLGATE_HTTP_ADDRESS") or "127.0.0.1:8080",
            "grpc_address": env.get("TOLLGATE_GRPC_ADDRESS") or "127.0.0.1:50051",
        },
        "database": {"url": env.get("TOLLGATE_DATABASE_URL") or "sqlite:///tollgate.db"},
        "admin": {"token": env.get("TOLLGATE_ADMIN_TOKEN", "")},
        "keys": {"pepper": env.get("TOLLGATE_KEY_PEPPER", "")},
        "providers": providers,
        "models": models,
        "demo": {"create_account": True},
    }
