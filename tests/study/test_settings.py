"""Where a study's parts go (study.settings), as users rely on it: the command-line flag wins over
the environment variable, which wins over the search-space file, which wins over the embedded
default under STUDY_HOME (./studies). The Optuna storage and the Ray cluster have no space-file
setting. (The registry reference forms of `study pull` / `study score` are in
test_registry_rules.py.)"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from study import settings

WHERE = ("MLFLOW_TRACKING_URI", "STUDY_STORAGE", "STUDY_OPTUNA_STORAGE", "RAY_ADDRESS", "STUDY_HOME")


@pytest.fixture
def cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty working folder and no location from the caller's environment."""
    for name in WHERE:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path.resolve()


def space(tracking: str | None = None, storage: str | None = None) -> SimpleNamespace:
    """What settings.resolve reads of a loaded search-space file: tracking.uri and storage.path."""
    return SimpleNamespace(tracking=SimpleNamespace(uri=tracking), storage=SimpleNamespace(path=storage))


# target (a Targets field and settings.resolve keyword): (its environment variable, the value each
# place gives, the embedded default under a home folder)
TARGETS = {
    "tracking_uri": ("MLFLOW_TRACKING_URI",
                     {"flag": "http://flag.example:5000", "env": "http://env.example:5000",
                      "space": "http://space.example:5000"},
                     lambda home: f"sqlite:///{home / 'mlflow.db'}"),
    "storage": ("STUDY_STORAGE",
                {"flag": "s3://flag-bucket/ray", "env": "s3://env-bucket/ray", "space": "s3://space-bucket/ray"},
                lambda home: str(home / "ray")),
    "optuna_storage": ("STUDY_OPTUNA_STORAGE",
                       {"flag": "postgresql+psycopg://vamp@flag.example/optuna",
                        "env": "postgresql+psycopg://vamp@env.example/optuna"},
                       lambda home: f"sqlite:///{home / 'optuna.db'}"),
    "address": ("RAY_ADDRESS", {"flag": "10.0.0.1:6379", "env": "10.0.0.2:6379"},
                lambda home: None),
}
WITH_SPACE = ("tracking_uri", "storage")  # the targets a space file can set
WITHOUT_SPACE = ("optuna_storage", "address")


# flag, environment variable, space file -> which one wins ("" counts as not given)
PRECEDENCE = [
    pytest.param("flag", "env", True, "flag", id="flag-beats-env-and-space"),
    pytest.param("flag", None, True, "flag", id="flag-beats-space"),
    pytest.param("flag", None, False, "flag", id="flag-alone"),
    pytest.param(None, "env", True, "env", id="env-beats-space"),
    pytest.param(None, "env", False, "env", id="env-alone"),
    pytest.param(None, None, True, "space", id="space-alone"),
    pytest.param(None, None, False, "default", id="default"),
    pytest.param("", "", True, "space", id="empty-flag-and-env-are-unset"),
    pytest.param("", "", False, "default", id="empty-everything-is-default"),
]


def given(target: str, monkeypatch: pytest.MonkeyPatch, flag: str | None, env: str | None) -> str | None:
    """Set the target's environment variable as the row says; return the flag's value."""
    variable, values, _ = TARGETS[target]
    if env is not None:
        monkeypatch.setenv(variable, values["env"] if env == "env" else env)
    return values["flag"] if flag == "flag" else flag


@pytest.mark.parametrize("flag, env, in_space, winner", PRECEDENCE)
@pytest.mark.parametrize("target", WITH_SPACE)
def test_flag_then_env_then_space_then_default(cwd: Path, monkeypatch: pytest.MonkeyPatch, target, flag, env,
                                               in_space, winner):
    """Through settings.resolve, as `study run` resolves its targets."""
    _, values, default = TARGETS[target]
    flag_value = given(target, monkeypatch, flag, env)
    spec = space(**{{"tracking_uri": "tracking", "storage": "storage"}[target]: values["space"]}) if in_space \
        else space()
    expected = default(cwd / "studies") if winner == "default" else values[winner]
    assert getattr(settings.resolve(spec, **{target: flag_value}), target) == expected


@pytest.mark.parametrize("flag, env, in_space, winner", PRECEDENCE)
@pytest.mark.parametrize("target", WITHOUT_SPACE)
def test_flag_then_env_then_default_whatever_the_space_says(cwd: Path, monkeypatch: pytest.MonkeyPatch, target,
                                                            flag, env, in_space, winner):
    """The Optuna storage and the Ray cluster ignore the space file (it has no setting for them,
    and its tracking/storage settings do not leak into them)."""
    _, values, default = TARGETS[target]
    flag_value = given(target, monkeypatch, flag, env)
    spec = space(tracking="http://space.example:5000", storage="s3://space-bucket/ray") if in_space else space()
    got = getattr(settings.resolve(spec, **{target: flag_value}), target)
    expected = default(cwd / "studies") if winner in ("space", "default") else values[winner]
    assert got == expected


@pytest.mark.parametrize("flag, env, in_space, winner", PRECEDENCE)
def test_the_single_resolvers_agree(cwd: Path, monkeypatch: pytest.MonkeyPatch, flag, env, in_space, winner):
    """`study pull`, `study score` and `study status` call the resolvers directly: the same order
    holds there."""
    flags = {target: given(target, monkeypatch, flag, env) for target in ("tracking_uri", "storage", "optuna_storage")}
    from_space = {target: TARGETS[target][1]["space"] if in_space else None for target in WITH_SPACE}

    def expect(target: str) -> str:
        _, values, default = TARGETS[target]
        no_space_layer = winner == "space" and target not in WITH_SPACE
        return default(cwd / "studies") if winner == "default" or no_space_layer else values[winner]

    assert settings.resolve_tracking_uri(flags["tracking_uri"], from_space["tracking_uri"]) == expect("tracking_uri")
    assert settings.resolve_storage(flags["storage"], from_space["storage"]) == expect("storage")
    assert settings.resolve_optuna_storage(flags["optuna_storage"]) == expect("optuna_storage")


def test_study_home_moves_every_default(cwd: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("STUDY_HOME", "elsewhere")  # relative: to the working folder
    targets = settings.resolve(space())
    home = cwd / "elsewhere"
    assert targets.home == home
    assert targets.tracking_uri == f"sqlite:///{home / 'mlflow.db'}"
    assert targets.optuna_storage == f"sqlite:///{home / 'optuna.db'}"
    assert targets.storage == str(home / "ray")
    assert targets.address is None
    assert targets.artifact_location("s1") == (home / "artifacts" / "s1").as_uri()


@pytest.mark.parametrize("path, expected", [
    pytest.param("runs/ray", "{cwd}/runs/ray", id="relative-to-the-working-folder"),
    pytest.param("~/ray", "{user_home}/ray", id="user-home-expanded"),
    pytest.param("{cwd}/a/../ray", "{cwd}/ray", id="absolute-normalised"),
    pytest.param("s3://bucket/prefix", "s3://bucket/prefix", id="s3-verbatim"),
    pytest.param("file:///data/ray", "file:///data/ray", id="other-urls-verbatim"),
])
@pytest.mark.parametrize("place", ["flag", "env", "space"])
def test_a_local_storage_folder_becomes_absolute_wherever_it_is_set(cwd: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    path, expected, place):
    """Ray workers may run elsewhere: the storage handed to them is an absolute path or a URL,
    whichever place named it. (A relative path in a space file is taken relative to the working
    folder, not to the file's folder.)"""
    monkeypatch.setenv("HOME", str(cwd / "user"))
    path = path.format(cwd=cwd)
    if place == "env":
        monkeypatch.setenv("STUDY_STORAGE", path)
    got = settings.resolve(space(storage=path if place == "space" else None),
                           storage=path if place == "flag" else None).storage
    assert got == expected.format(cwd=cwd, user_home=cwd / "user")
