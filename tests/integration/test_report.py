"""`study report` on real studies: the smallest study that registers a champion in every group (two
models, two priors, two trials each, on the embedded default), then the report as a user runs it:
the table on the terminal, report.md, report.json and two PNG figures in ./report-STUDY, the same
files under `report/` in the study's parent run, every number as the registry holds it. A study
tracked on a real MLflow server (PostgreSQL, artifacts proxied to S3) reports the same way. And the
refusals: an unknown study, a study without a champion, a tracking store that does not exist
(exit 2, nothing written)."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from study.report.paper import paper_table
from tests.helpers import Tracked, embedded_env, json_out, small_space, study

STUDY = "reported"
FILES = {"report.md", "report.json", "validation_loss.png", "vs_paper.png"}


@pytest.fixture(scope="module")
def reported(data_cache, tmp_path_factory):
    """The study, run to its end on the embedded default under a folder of its own."""
    folder = tmp_path_factory.mktemp("report")
    env = embedded_env(folder, data_cache)
    result = json_out(study("run", small_space(folder, name=STUDY, models=["vae", "hvae"]), "--json", env=env))
    assert len(result["champions"]) == 4
    return {"env": env, "folder": folder, "tracking_uri": f"sqlite:///{folder}/studies/mlflow.db"}


def assert_figure(path: Path) -> None:
    """A PNG image that is not blank."""
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 200
        pixels = np.asarray(image.convert("L"))
    assert len(np.unique(pixels)) > 10 and pixels.std() > 5


def assert_numbers_are_the_registrys(report: dict, t: Tracked) -> None:
    """Every group's row holds its champion's registered tags, the paper's cell and the trial count."""
    table = paper_table()
    assert report["unit"] == "nats" and report["dataset"] == "static_mnist"
    for row in report["groups"]:
        version = t.client.get_model_version(row["champion"]["registered_model"], row["champion"]["version"])
        tags = version.tags
        assert version.run_id == row["champion"]["run_id"] and tags["study"] == report["study"]
        assert row["ours"] == row["test_ll"] == float(tags["test_ll"])
        assert row["paper"] == table.cell("static_mnist", row["model"], row["prior"]) is not None
        assert row["difference"] == pytest.approx(float(tags["test_ll"]) - row["paper"])
        assert row["protocol"] == {"protocol": tags["protocol"], "samples": int(tags["protocol.samples"]),
                                   "test_size": int(tags["protocol.test_size"]),
                                   "train_size": int(tags["protocol.train_size"])}
        assert (row["epochs"], row["best_epoch"], row["stop_reason"]) == (
            int(tags["epochs"]), int(tags["best_epoch"]), tags["stop_reason"])
        assert row["champion"]["trial"] == tags["trial_id"]
        assert row["trials"] == sum((r.data.tags["model"], r.data.tags["prior"]) == (row["model"], row["prior"])
                                    for r in t.trials)


def assert_logged_to_the_parent_run(report: dict, t: Tracked, tmp: Path) -> None:
    (parent,) = t.parents
    assert report["parent_run_id"] == parent.info.run_id
    assert {a.path for a in t.client.list_artifacts(parent.info.run_id, "report")} == {f"report/{f}" for f in FILES}
    logged = Path(t.client.download_artifacts(parent.info.run_id, "report/report.json", str(tmp)))
    assert json.loads(logged.read_text())["groups"] == report["groups"]


def test_the_report_of_a_study_against_the_paper(reported, tmp_path):
    r = study("report", STUDY, env=reported["env"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    out = tmp_path / f"report-{STUDY}"  # the default folder
    assert {p.name for p in out.iterdir()} == FILES
    for name in ("validation_loss.png", "vs_paper.png"):
        assert_figure(out / name)

    report = json.loads((out / "report.json").read_text())
    t = Tracked(reported["tracking_uri"], STUDY)
    assert [(g["model"], g["prior"]) for g in report["groups"]] == [
        ("vae", "standard"), ("vae", "vampprior"), ("hvae", "standard"), ("hvae", "vampprior")]
    assert report["trials"] == len(t.trials) == 8 and report["champions"] == 4
    assert_numbers_are_the_registrys(report, t)
    assert_logged_to_the_parent_run(report, t, tmp_path / "download")

    # the terminal table and report.md show the same numbers
    markdown = (out / "report.md").read_text()
    for row in report["groups"]:
        for value in (row["ours"], row["paper"]):
            assert f"{value:.2f}" in r.stdout and f"{value:.2f}" in markdown
        assert f"{row['difference']:+.2f}" in r.stdout and f"{row['difference']:+.2f}" in markdown
    assert "![validation loss per epoch](validation_loss.png)" in markdown and "arXiv:1705.07120" in markdown


def test_a_study_on_a_tracking_server_reports_the_same_way(tmp_path, data_cache, mlflow_server):
    env = embedded_env(tmp_path, data_cache)
    name = "reported-remote"
    space = small_space(tmp_path, name=name, space={"lr": [5.0e-4], "priors": {"standard": {}}},
                        fixed={"epochs": 2, "warmup": 1, "patience": 0, "hidden": 32, "train_limit": 300},
                        search={"algorithm": "random", "seed": 0, "trials_per_group": 1})
    json_out(study("run", space, "--tracking-uri", mlflow_server.tracking_uri, "--json", env=env))
    report = json_out(study("report", name, "--tracking-uri", mlflow_server.tracking_uri, "--out", tmp_path / "out",
                            "--json", env=env))
    assert not (tmp_path / "studies" / "mlflow.db").exists()  # read from the server only
    assert set(report["files"]) == FILES and report["artifact_uri"].endswith("/report")
    for figure in ("validation_loss.png", "vs_paper.png"):
        assert_figure(tmp_path / "out" / figure)
    t = Tracked(mlflow_server.tracking_uri, name)
    assert [(g["model"], g["prior"], g["trials"]) for g in report["groups"]] == [("vae", "standard", 1)]
    assert_numbers_are_the_registrys(report, t)
    assert_logged_to_the_parent_run(report, t, tmp_path / "download")


def assert_refused(r, message: str, out: Path) -> None:
    assert r.returncode == 2, r.stderr[-4000:]
    assert message in r.stderr, r.stderr[-4000:]
    assert r.stdout == "" and not out.exists()


def test_an_unknown_study_and_a_study_without_a_champion_are_refused(reported, tmp_path):
    from study.tracking import StudyTracker

    out = tmp_path / "out"
    r = study("report", "no-such-study", "--out", out, env=reported["env"])
    assert_refused(r, "no study 'no-such-study'", out)
    assert "study status" in r.stderr and STUDY in r.stderr  # how to list the studies, and the ones there are

    # a study that has begun (its experiment and parent run, as `study run` makes them) and has no champion yet
    tracker = StudyTracker(reported["tracking_uri"], "begun", uuid.uuid4().hex)
    parent_id = tracker.parent_run({"dataset": "static_mnist", "models": "vae", "priors": "standard"})
    r = study("report", "begun", "--out", out, "--json", env=reported["env"])
    assert_refused(r, "study 'begun' has no champion yet", out)
    assert "study status begun" in r.stderr
    assert tracker.client.list_artifacts(parent_id) == []  # nothing logged either


def test_a_tracking_store_that_does_not_exist_is_refused(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    r = study("report", STUDY, cwd=work)  # the embedded default: ./studies/mlflow.db
    assert_refused(r, "no tracking store", work / f"report-{STUDY}")
    assert str(work / "studies" / "mlflow.db") in r.stderr and list(work.iterdir()) == []
