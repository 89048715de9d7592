"""Which configured model a request names, and whether the caller may use it."""

from __future__ import annotations

import time
from collections.abc import Mapping

from gateway_core.auth import Principal
from gateway_core.config import ModelSettings
from gateway_core.errors import GatewayError, Reason


def model_not_found(model: str) -> GatewayError:
    """OpenAI's own wording; the same for unknown and forbidden models, so a key
    cannot probe which models exist beyond its allow-list."""
    return GatewayError(
        Reason.MODEL_NOT_FOUND,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
    )


class Router:
    """Resolves client model ids to configured models. Immutable; safe to share."""

    def __init__(self, models: Mapping[str, ModelSettings], loaded_at: int | None = None) -> None:
        self._models = dict(models)
        self._sorted = sorted(self._models.values(), key=lambda m: m.name)
        # OpenAI lists a creation time per model; ours is when this configuration was loaded.
        self.loaded_at = int(time.time()) if loaded_at is None else loaded_at

    def resolve(self, model: str, principal: Principal) -> ModelSettings:
        """The model named `model`, if it exists and the principal may use it."""
        settings = self._models.get(model)
        if settings is None or not self.allowed(model, principal):
            raise model_not_found(model)
        return settings

    def visible_models(self, principal: Principal) -> list[ModelSettings]:
        """Every model the principal may use, sorted by id."""
        return [m for m in self._sorted if self.allowed(m.name, principal)]

    @staticmethod
    def allowed(model: str, principal: Principal) -> bool:
        return not principal.allowed_models or model in principal.allowed_models
