"""The configuration `tollgate serve` runs on when no file is given."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
    if env.get("OPENAI_API_KEY"):
        providers.append({
            "name": "openai",
            "type": "openai",
            "base_url": env.get("OPENAI_BASE_URL") or "https://api.openai.com/v1",
            "api_key": "${OPENAI_API_KEY}",
        })
        models += [
            {"name": "gpt-4o-mini", "routes": [{"provider": "openai", "model": "gpt-4o-mini"}], "input_price": 0.15, "output_price": 0.60, "cached_input_price": 0.075},
            {"name": "gpt-4o", "routes": [{"provider": "openai", "model": "gpt-4o"}], "input_price": 2.50, "output_price": 10.00, "cached_input_price": 1.25},
            {"name": "gpt-4.1-mini", "routes": [{"provider": "openai", "model": "gpt-4.1-mini"}], "input_price": 0.40, "output_price": 1.60, "cached_input_price": 0.10},
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
