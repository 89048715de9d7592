"""What each OpenAI-compatible vendor accepts, and the dialect one configured upstream speaks. Pure.

A VendorProfile is a vendor's documented quirks (which output-limit field it
takes, which OpenAI parameters it rejects, what it renames); a Dialect is a
profile combined with the operator's overrides from ProviderSettings. Both are
frozen and built once per provider; `adapt.py` applies a Dialect to a body.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway_core.config import ProviderSettings

MAX_TOKENS = "max_tokens"
MAX_COMPLETION_TOKENS = "max_completion_tokens"


@dataclass(frozen=True)
class VendorProfile:
    """One vendor's documented differences from OpenAI's chat.completions request."""

    name: str
    # The output-limit field it takes; None sends the one the client used.
    limit_field: str | None = None
    # OpenAI parameters it answers with a 4xx.
    rejects: frozenset[str] = frozenset()
    # n is accepted only when it is 1.
    single_choice: bool = False
    # OpenAI name -> the vendor's name for the same parameter.
    renames: tuple[tuple[str, str], ...] = ()
    # Message fields it rejects; they are always removed (harmless to lose, fatal to send).
    dropped_message_fields: frozenset[str] = frozenset()
    # What temperature 0 is sent as, for vendors that mistreat an exact 0.
    zero_temperature: float | None = None
    # Tool-call ids must be exactly 9 characters [a-zA-Z0-9].
    short_tool_call_ids: bool = False
    # Streams always end with usage and stream_options is refused, so it is not sent.
    streams_usage_unasked: bool = False
    # No developer role: developer messages go as system messages.
    developer_as_system: bool = False


PROFILES: Mapping[str, VendorProfile] = {
    # Reasoning models (o-series, gpt-5) answer 400 unsupported_parameter to
    # max_tokens; every current model accepts max_completion_tokens.
    # [OPY types/chat/completion_create_params.py; protocols.md 1.1]
    "openai": VendorProfile("openai", limit_field=MAX_COMPLETION_TOKENS),
    # Documents only max_tokens; reasoning_content round-trips and
    # prompt_cache_hit_tokens are handled for every vendor in response.py.
    # [api-docs.deepseek.com/api/create-chat-completion, guides/thinking_mode]
    "deepseek": VendorProfile("deepseek", limit_field=MAX_TOKENS),
    # Mistral validates with extra="forbid": any field outside its schema is a
    # 422 extra_forbidden (mistralai/platform-docs-public#7). Its schema
    # (docs.mistral.ai/api, chat completion) has max_tokens and random_seed, no
    # logprobs/top_logprobs/logit_bias, and roles system/user/assistant/tool.
    # Seen rejected: store and max_completion_tokens (Gitlawb/openclaude#739),
    # stream_options, while usage comes in the last chunk anyway (cline/cline#582,
    # openai/openai-agents-python#442), messages[].name on a user message
    # (Gage-Technologies/mistral-go#2), a replayed reasoning_content
    # (BerriAI/litellm#30835). Tool-call ids must be 9 alphanumerics
    # (langchain-ai/langchain#24668, jackmpcollins/magentic#276).
    "mistral": VendorProfile(
        "mistral", limit_field=MAX_TOKENS,
        rejects=frozenset({"logprobs", "top_logprobs", "logit_bias", "store"}),
        renames=(("seed", "random_seed"),),
        dropped_message_fields=frozenset({"name", "reasoning_content"}),
        short_tool_call_ids=True,
        streams_usage_unasked=True,
        developer_as_system=True,
    ),
    # "The following fields are currently not supported and will result in a
    # 400 error: logprobs, logit_bias, top_logprobs, messages[].name; if N is
    # supplied, it must be equal to 1"; "a temperature value of 0 ... will be
    # converted to 1e-8"; max_tokens is deprecated for max_completion_tokens.
    # [console.groq.com/docs/openai, console.groq.com/docs/api-reference]
    "groq": VendorProfile(
        "groq", limit_field=MAX_COMPLETION_TOKENS,
        rejects=frozenset({"logprobs", "logit_bias", "top_logprobs"}),
        single_choice=True,
        dropped_message_fields=frozenset({"name"}),
        zero_temperature=1e-8,
    ),
    # Older vLLM releases and Ollama's compatibility layer document max_tokens
    # only; both ignore fields they do not know rather than failing.
    # [docs.vllm.ai OpenAI-compatible server; docs.ollama.com/api/openai-compatibility]
    "vllm": VendorProfile("vllm", limit_field=MAX_TOKENS),
    "ollama": VendorProfile("ollama", limit_field=MAX_TOKENS),
    # An unknown OpenAI-compatible server: rewrite nothing but the output limit,
    # sent as max_tokens, the one field every compatible server knows. A server
    # that ignored max_completion_tokens would not be held to what was reserved.
    # Operators name other quirks (or max_tokens_field) in settings.
    "generic": VendorProfile("generic", limit_field=MAX_TOKENS),
}

# Vendors recognised by their API host (or a subdomain, e.g. eu.api.openai.com).
_DOMAINS: tuple[tuple[str, str], ...] = (
    ("openai.com", "openai"),
    ("deepseek.com", "deepseek"),
    ("mistral.ai", "mistral"),
    ("groq.com", "groq"),
)


def detect_vendor(base_url: str) -> str:
    """The vendor a base URL belongs to, by its host; "generic" when unknown."""
    try:
        host = (urlsplit(base_url).hostname or "").rstrip(".")
    except ValueError:
        return "generic"
    for domain, vendor in _DOMAINS:
        if host == domain or host.endswith("." + domain):
            return vendor
    return "generic"


def profile_for(settings: ProviderSettings) -> VendorProfile:
    """The configured vendor's profile, or the one detected from base_url when vendor is ""."""
    vendor = settings.vendor or detect_vendor(settings.base_url)
    return PROFILES.get(vendor, PROFILES["generic"])


@dataclass(frozen=True)
class Dialect:
    """How to speak to one configured upstream: its vendor profile plus the operator's overrides."""

    profile: VendorProfile
    # The output-limit field to send; None sends the one the client used.
    limit_field: str | None
    # Every parameter this upstream does not take (profile's and operator's).
    unsupported: frozenset[str]
    # Remove an unsupported parameter the client set (True) or refuse the request (False).
    drop_unsupported: bool


PASSTHROUGH = Dialect(PROFILES["generic"], None, frozenset(), drop_unsupported=False)


def dialect_for(settings: ProviderSettings) -> Dialect:
    """The Dialect for a configured upstream (settings win over the vendor profile)."""
    profile = profile_for(settings)
    return Dialect(
        profile=profile,
        limit_field=settings.max_tokens_field or profile.limit_field,
        unsupported=profile.rejects | frozenset(settings.unsupported_params),
        drop_unsupported=settings.unsupported_param_policy == "drop",
    )
