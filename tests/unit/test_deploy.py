"""deploy/ stays consistent with the code: commands and flags exist, the config parses, probes hit real endpoints.

Nothing here can run docker or a cluster; it checks what the files ask of Tollgate.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from gateway_core.cli import main
from gateway_core.config import parse_settings
from http_facade.routes import router as facade_routes

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CONFIG_PATH = "/etc/tollgate/tollgate.toml"
# What the compose file and the Secret provide; tollgate.toml must need nothing else.
PROVIDED_ENV = {"TOLLGATE_DATABASE_URL", "TOLLGATE_ADMIN_TOKEN", "TOLLGATE_KEY_PEPPER", "OPENAI_API_KEY"}


def _yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kubernetes() -> list[dict[str, Any]]:
    return [doc for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")) for doc in _yaml_documents(path)]


def _containers(kind: str) -> list[dict[str, Any]]:
    found = []
    for doc in _kubernetes():
        if doc["kind"] == kind:
            found.extend(doc["spec"]["template"]["spec"]["containers"])
    return found


def _check_tollgate_command(argv: list[str]) -> click.Context:
    """Parses argv as `tollgate argv` would (raises on an unknown command or flag); the subcommand's context."""
    name, *rest = argv
    with click.Context(main) as parent:
        command = main.get_command(parent, name)
        assert command is not None, f"no `tollgate {name}` command"
        return command.make_context(name, list(rest), parent=parent)


def _settings_env() -> dict[str, str]:
    return {
        "TOLLGATE_DATABASE_URL": "postgresql+psycopg://tollgate:pw@postgres:5432/tollgate",
        "TOLLGATE_ADMIN_TOKEN": "a-deploy-admin-token-0123456789",
        "TOLLGATE_KEY_PEPPER": "pepper",
        "OPENAI_API_KEY": "",
    }


def test_the_deploy_config_parses_with_only_the_provided_environment() -> None:
    text = (DEPLOY / "tollgate.toml").read_text()
    assert set(re.findall(r"\$\{(\w+)", text)) <= PROVIDED_ENV
    settings = parse_settings(tomllib.loads(text), _settings_env())
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.database.migrate_on_start is False  # the migrate step owns upgrades
    assert settings.grpc_address == "0.0.0.0:50051" and settings.http_address == "0.0.0.0:8080"
    assert settings.limits.redis_url.startswith("redis://")  # replicas share their rate-limit counters


def test_the_configmap_carries_the_same_config() -> None:
    (configmap,) = [doc for doc in _kubernetes() if doc["kind"] == "ConfigMap"]
    assert configmap["data"]["tollgate.toml"] == (DEPLOY / "tollgate.toml").read_text()


def test_the_secret_provides_every_variable_the_config_needs() -> None:
    (secret,) = [doc for doc in _kubernetes() if doc["kind"] == "Secret"]
    assert set(secret["stringData"]) == PROVIDED_ENV


def test_compose_commands_exist_and_share_one_database_config() -> None:
    (compose,) = _yaml_documents(DEPLOY / "compose.yaml")
    services = compose["services"]
    tollgate = {name: s for name, s in services.items() if s.get("image") == "tollgate:latest"}
    assert set(tollgate) == {"migrate", "core", "facade"}
    roles = {name: _check_tollgate_command(s["command"]) for name, s in tollgate.items()}
    assert {ctx.info_name for ctx in roles.values()} == {"migrate", "core", "facade"}
    for service in tollgate.values():
        assert set(service["environment"]) >= PROVIDED_ENV
        assert f"./tollgate.toml:{CONFIG_PATH}:ro" in service["volumes"]
    assert roles["facade"].params["core_target"] == "dns:///core:50051"
    assert services["core"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert {"postgres", "redis", "lb"} <= set(services)
    assert "server facade:8080" in (DEPLOY / "nginx.conf").read_text()


def test_kubernetes_commands_exist_and_probe_real_endpoints() -> None:
    by_name = {c["name"]: c for c in _containers("Deployment") + _containers("Job")}
    assert set(by_name) == {"core", "facade", "migrate"}
    for container in by_name.values():
        assert container["image"] == "tollgate:latest"
        ctx = _check_tollgate_command(container["args"])
        assert ctx.params["config_path"] == Path(CONFIG_PATH)
        assert {"name": "config", "mountPath": "/etc/tollgate", "readOnly": True} in container["volumeMounts"]
        assert container["envFrom"] == [{"secretRef": {"name": "tollgate-secrets"}}]
    core = by_name["core"]
    assert core["ports"] == [{"name": "grpc", "containerPort": 50051}]
    assert core["readinessProbe"]["grpc"]["port"] == core["livenessProbe"]["grpc"]["port"] == 50051
    facade = by_name["facade"]
    facade_ctx = _check_tollgate_command(facade["args"])
    assert facade_ctx.params["listen"] == "0.0.0.0:8080"
    assert facade_ctx.params["core_target"] == "dns:///tollgate-core-headless:50051"
    paths = {getattr(route, "path", "") for route in facade_routes.routes}
    assert facade["readinessProbe"]["httpGet"]["path"] == "/readyz" in paths
    assert facade["livenessProbe"]["httpGet"]["path"] == "/healthz" in paths
    services = {doc["metadata"]["name"]: doc for doc in _kubernetes() if doc["kind"] == "Service"}
    assert services["tollgate-core-headless"]["spec"]["clusterIP"] == "None"
    for doc in _kubernetes():
        if doc["kind"] in ("Deployment", "Job"):
            assert doc["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_kustomization_lists_every_manifest() -> None:
    (kustomization,) = _yaml_documents(DEPLOY / "kubernetes" / "kustomization.yaml")
    manifests = {p.name for p in (DEPLOY / "kubernetes").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests


def test_the_image_runs_tollgate_as_a_non_root_user() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert dockerfile.startswith("# ") and "\nFROM python:3.11-slim\n" in dockerfile
    assert re.search(r"^USER 10001:10001$", dockerfile, re.MULTILINE)
    assert 'ENTRYPOINT ["tollgate"]' in dockerfile
    assert f"ENV TOLLGATE_CONFIG={CONFIG_PATH}" in dockerfile


@pytest.mark.parametrize("argv", [["core", "--bogus"], ["nope"]])
def test_the_command_check_would_notice_a_wrong_flag(argv: list[str]) -> None:
    """Guards the checks above against passing vacuously."""
    with pytest.raises((click.UsageError, AssertionError)):
        _check_tollgate_command(argv)
