"""Configuration: TOML to validated settings, one clear line per problem."""

from pathlib import Path

import pytest

from gateway_core.config import ConfigError, embedded_settings, load_settings, parse_settings, price_to_micros

GOOD = """
[server]
http_address = "127.0.0.1:8080"
grpc_address = "127.0.0.1:50051"

[database]
url = "sqlite:///tollgate.db"

[admin]
token = "${TOLLGATE_ADMIN_TOKEN}"

[[providers]]
name = "openai"
type = "openai"
base_url = "https://api.openai.com/v1/"
api_key = "${OPENAI_API_KEY}"

[[models]]
name = "gpt-4o-mini"
routes = [{ provider = "openai", model = "gpt-4o-mini" }]
input_price = 0.15
output_price = 0.60
"""


def _problems(raw: dict, env: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw, env or {})
    return caught.value.problems


def test_design_example_loads_with_env_expansion(tmp_path: Path) -> None:
    path = tmp_path / "tollgate.toml"
    path.write_text(GOOD)
    settings = load_settings(path, {"TOLLGATE_ADMIN_TOKEN": "a" * 32, "OPENAI_API_KEY": "sk-upstream"})
    assert settings.admin_token == "a" * 32
    provider = settings.providers["openai"]
    assert provider.api_key == "sk-upstream" and provider.base_url == "https://api.openai.com/v1"
    model = settings.models["gpt-4o-mini"]
    assert (model.input_price_micros, model.output_price_micros) == (150_000, 600_000)
    assert "sk-upstream" not in repr(settings), "secrets must not appear in reprs (logs)"


def test_unset_variable_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "tollgate.toml"
    path.write_text(GOOD)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {"OPENAI_API_KEY": "x"})
    assert caught.value.problems == ["admin.token: environment variable TOLLGATE_ADMIN_TOKEN is not set"]


def test_variable_default_applies() -> None:
    settings = parse_settings({"admin": {"token": "${NOPE:-0123456789abcdef}"}}, {})
    assert settings.admin_token == "0123456789abcdef"


def test_every_problem_is_reported_one_line_each() -> None:
    problems = _problems({
        "server": {"http_address": "nonsense", "grpc_address": "127.0.0.1:99999"},
        "database": {"url": "mysql://x"},
        "providers": [{"name": "p", "type": "smoke-signals"}, {"name": "o", "type": "openai", "base_url": "ftp://x"}],
        "models": [
            {"name": "a", "routes": [{"provider": "ghost", "model": "a"}], "input_price": 1, "output_price": 1},
            {"name": "b", "routes": [{"provider": "o"}], "input_price": -1},
            {"name": "c", "routes": [], "input_price": "abc", "output_price": 0.0000001},
        ],
        "surprise": {},
    })
    assert problems == [
        "surprise: unknown section",
        "server.http_address: 'nonsense' is not HOST:PORT",
        "server.grpc_address: '127.0.0.1:99999' is not HOST:PORT",
        "database.url: 'mysql://x' is not a sqlite:/// or postgresql:// URL",
        "providers[0].type: 'smoke-signals' is not one of anthropic, gemini, mock, openai",
        "providers[1].base_url: 'ftp://x' is not an http(s) URL",
        "models[0].routes[0].provider: unknown provider 'ghost'",
        "models[1].input_price: must not be negative",
        "models[1].output_price: is required (USD per 1M tokens)",
        "models[2].routes: needs at least one route",
        "models[2].input_price: 'abc' is not a number",
        "models[2].output_price: has more precision than one micro-USD per 1M tokens",
    ]


def test_invalid_toml_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    assert len(caught.value.problems) == 1 and "invalid TOML" in caught.value.problems[0]


@pytest.mark.parametrize(
    ("value", "micros"),
    [(0.15, 150_000), ("0.15", 150_000), (2.5, 2_500_000), (0, 0), (10, 10_000_000), (0.000001, 1), ("1e-6", 1)],
)
def test_prices_convert_exactly(value: object, micros: int) -> None:
    assert price_to_micros(value) == micros


@pytest.mark.parametrize("value", [-0.01, "nan", "inf", True, None, "0.0000005"])
def test_bad_prices_are_refused(value: object) -> None:
    with pytest.raises(ValueError):
        price_to_micros(value)


def test_embedded_defaults_have_mock_models_and_generate_an_admin_token() -> None:
    settings = embedded_settings({})
    assert set(settings.models) == {"mock-chat", "mock-echo"}
    assert list(settings.providers) == ["mock"]
    assert settings.admin_token_generated and len(settings.admin_token) >= 16
    assert settings.create_demo_account


def test_embedded_defaults_switch_on_openai_from_env() -> None:
    settings = embedded_settings({"OPENAI_API_KEY": "sk-x", "TOLLGATE_ADMIN_TOKEN": "t" * 20,
                                  "TOLLGATE_HTTP_ADDRESS": "127.0.0.1:9999"})
    assert settings.providers["openai"].api_key == "sk-x"
    assert "gpt-4o-mini" in settings.models and not settings.admin_token_generated
    assert settings.http_address == "127.0.0.1:9999"


def test_embedded_defaults_switch_on_anthropic_and_gemini_from_env() -> None:
    settings = embedded_settings({"ANTHROPIC_API_KEY": "sk-ant-x", "GEMINI_API_KEY": "AIzaX"})
    assert settings.providers["anthropic"].base_url == "https://api.anthropic.com"
    assert settings.providers["gemini"].api_key == "AIzaX"
    assert settings.models["claude-sonnet-4-5"].routes[0].provider == "anthropic"
    assert settings.models["gemini-2.5-pro"].cached_input_price_micros == 312_500


def test_typos_anywhere_are_reported_not_ignored() -> None:
    problems = _problems({
        "server": {"http_adress": "127.0.0.1:1"},
        "keys": {"cache_second": 1},
        "providers": [{"name": "m", "type": "mock", "colour": "blue"}],
        "models": [{"name": "x", "routes": [{"provider": "m", "modle": "y"}], "input_price": 1, "output_price": 1,
                    "max_output_token": 5}],
    })
    assert problems == [
        "server.http_adress: unknown setting",
        "keys.cache_second: unknown setting",
        "providers[0].colour: unknown setting",
        "models[0].max_output_token: unknown setting",
        "models[0].routes[0].modle: unknown setting",
    ]


def test_database_pool_settings_parse_and_default() -> None:
    raw = {"database": {"url": "postgresql+psycopg://u@h/db", "pool_size": 12, "max_overflow": 0,
                        "pool_timeout_seconds": 2.5, "migrate_on_start": False}}
    database = parse_settings(raw, {}).database
    assert (database.pool_size, database.max_overflow, database.pool_timeout_seconds) == (12, 0, 2.5)
    assert database.migrate_on_start is False
    assert parse_settings({}, {}).database.migrate_on_start is True


def test_bad_database_pool_settings_are_each_reported() -> None:
    raw = {"database": {"pool_size": 0, "max_overflow": -1, "pool_timeout_seconds": "soon", "migrate_on_start": 1}}
    with pytest.raises(ConfigError) as exc:
        parse_settings(raw, {})
    assert {line.split(":")[0] for line in exc.value.problems} == {
        "database.pool_size", "database.max_overflow", "database.pool_timeout_seconds", "database.migrate_on_start",
    }
