"""`study report STUDY`: read the study from MLflow, compare each group's champion with the paper's
Table 1, write report.md, report.json and the figures to a folder, and log them to the study's
parent run under `report/`.

Every check comes first (the tracking store exists, the study exists, it has a champion, the
folder can be made): a refused report writes nothing, locally or in MLflow."""
from __future__ import annotations

from pathlib import Path

from study import settings
from study.report.paper import paper_table
from trainables.errors import InputError

#: Where the report goes in the study's parent run.
ARTIFACT_PATH = "report"


def default_out(study: str) -> Path:
    """The folder a report goes to without --out: ./report-STUDY."""
    return Path(f"report-{study}")


def _folder(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out: cannot make the folder {out} ({e.strerror or e})") from None
    return out


def build_report(study: str, out: Path | None = None, tracking_uri: str | None = None) -> dict:
    """Make the report of `study` (see the module docstring); returns report.json's content plus
    where it went (`out`, `artifact_uri`)."""
    uri = settings.require_existing_store(settings.resolve_tracking_uri(tracking_uri))
    from mlflow import MlflowClient

    from study.report import figures, render
    from study.report.collect import collect
    from study.report.summary import summarize

    client = MlflowClient(uri, registry_uri=uri)
    record = collect(client, study, uri)
    if not record.champions:
        groups = len(record.groups())
        raise InputError(f"STUDY: study {study!r} has no champion yet: none of its {groups} groups has a registered "
                         f"champion ({len(record.trials)} trials so far). A group's champion is registered when all "
                         f"its trials have ended; `study status {study}` shows them")
    report = summarize(record, paper_table())
    folder = _folder(out or default_out(study))
    files = [folder / "report.md", folder / "report.json"]
    files[0].write_text(render.markdown(report), encoding="utf-8")
    files[1].write_text(render.to_json(report), encoding="utf-8")
    files.append(figures.validation_loss(record, folder / report["figures"]["validation_loss"]))
    files.append(figures.versus_paper(report, folder / report["figures"]["vs_paper"]))
    for path in files:
        client.log_artifact(record.parent_run_id, str(path), ARTIFACT_PATH)
    artifact_uri = f"{client.get_run(record.parent_run_id).info.artifact_uri}/{ARTIFACT_PATH}"
    return {**report, "out": str(folder.resolve()), "files": [p.name for p in files],
            "artifact_uri": settings.without_userinfo(artifact_uri)}
