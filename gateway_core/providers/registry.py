"""Configured providers by name, built from settings with one explicit factory per type."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gateway_core.config import ProviderSettings
from gateway_core.providers.anthropic.client import AnthropicProvider
from gateway_core.providers.base import Provider
from gateway_core.providers.gemini.client import GeminiProvider
from gateway_core.providers.http_client import UpstreamClient
from gateway_core.providers.mock import MockProvider
from gateway_core.providers.openai.client import OpenAIProvider

Factory = Callable[[ProviderSettings, UpstreamClient], Provider]

FACTORIES: Mapping[str, Factory] = {
    "mock": lambda settings, http: MockProvider(settings.name),
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "gemini": GeminiProvider,
}


def build_providers(settings: Mapping[str, ProviderSettings], http: UpstreamClient) -> dict[str, Provider]:
    """One provider per configured entry, keyed by its name, all sharing `http`."""
    providers: dict[str, Provider] = {}
    for name, provider_settings in settings.items():
        factory = FACTORIES.get(provider_settings.type)
        if factory is None:
            raise ValueError(f"providers.{name}: unknown provider type {provider_settings.type!r}")
        providers[name] = factory(provider_settings, http)
    return providers
