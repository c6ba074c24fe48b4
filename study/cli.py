"""The `study` command line. Exit codes: 0 success, 2 bad input (nothing started or written),
1 a failure while running. With --json, stdout holds one JSON object and nothing else."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from study.command import command, stdout
from study.errors import StudyFailed, StudyInterrupted
from study.stack.command import stack_app
from trainables.errors import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Hyperparameter studies of the VampPrior paper's models.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: download, verify, cache.")
app.add_typer(data_app, name="data")
app.add_typer(stack_app, name="stack")

err = Console(stderr=True, highlight=False, soft_wrap=True)


def _emit(result: dict, as_json: bool, human) -> None:
    if as_json:
        stdout.write(json.dumps(result) + "\n")
        stdout.flush()
    else:
        human(result)


# Options shared by the commands, defined once. Where a study's parts go is resolved by
# study.settings, first wins: the flag, the environment variable, the space file, the default.
TrackingUri = Annotated[Optional[str], typer.Option(
    help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, the space file's tracking.uri, or SQLite under "
         "$STUDY_HOME)")]
OptunaStorage = Annotated[Optional[str], typer.Option(
    help="the Optuna storage of the study's groups, an SQLAlchemy URL (default: $STUDY_OPTUNA_STORAGE, or SQLite "
         "under $STUDY_HOME)")]
Storage = Annotated[Optional[str], typer.Option(
    help="Ray storage: a folder or s3://bucket/prefix (default: $STUDY_STORAGE, the space file's storage.path, or "
         "$STUDY_HOME/ray)")]
Address = Annotated[Optional[str], typer.Option(help="a Ray cluster to join (default: $RAY_ADDRESS, or a local Ray)")]
Json = Annotated[bool, typer.Option("--json", help="print one JSON object on stdout")]


@command(app)
def run(
    space: Path = typer.Argument(..., help="a search-space YAML file (see search_spaces/)"),
    tracking_uri: TrackingUri = None,
    optuna_storage: OptunaStorage = None,
    storage: Storage = None,
    address: Address = None,
    dry_run: bool = typer.Option(False, help="validate and print the plan; start nothing"),
    resume: bool = typer.Option(False, "--resume", help="continue the study if it exists, as `study resume` "
                                "does (a changed spec is refused); start it if not: the command for jobs "
                                "that are retried or submitted again"),
    as_json: Json = False,
) -> None:
    """Run a study: every (model, prior) group's trials on Ray Tune, chosen by its own Optuna sampler,
    stopped early within the group, tracked in MLflow; register each group's champion."""
    from study.study_command import run_study

    result = run_study(space, tracking_uri=tracking_uri, optuna_storage=optuna_storage, storage=storage,
                       address=address, dry_run=dry_run, resume=None if resume else False, console=err)
    _emit(result, as_json, lambda r: err.print_json(data=r) if dry_run else None)


@command(app)
def resume(
    space: Path = typer.Argument(..., help="the search-space YAML file of the study"),
    tracking_uri: TrackingUri = None,
    optuna_storage: OptunaStorage = None,
    storage: Storage = None,
    address: Address = None,
    force: bool = typer.Option(False, help="resume at once although the study's record says a driver on "
                               "another machine runs it, without watching its heartbeat (that driver is gone)"),
    as_json: Json = False,
) -> None:
    """Continue a study where it stopped: ended trials are not run again, unended ones continue from
    their checkpoints, a larger budget adds trials; any other change to the file is refused."""
    from study.study_command import run_study

    result = run_study(space, tracking_uri=tracking_uri, optuna_storage=optuna_storage, storage=storage,
                       address=address, dry_run=False, resume=True, console=err, force=force)
    _emit(result, as_json, lambda r: None)


@command(app)
def stop(
    study_name: str = typer.Argument(..., metavar="STUDY", help="the name of a running study"),
    storage: Storage = None,
    wait: float = typer.Option(300, help="seconds to wait for the driver to stop"),
    as_json: Json = False,
) -> None:
    """End a running study cleanly, from any terminal: its trials stop, resumable with `study resume`."""
    from study.study_command import stop as stop_study

    result = stop_study(study_name, storage=storage, wait=wait)
    _emit(result, as_json, lambda r: err.print(f"study {escape(r['study'])}: {r['state']} (run {r['run']})"))


@command(app)
def status(
    study_name: Optional[str] = typer.Argument(None, metavar="[STUDY]", help="a study name; none: list the studies"),
    tracking_uri: TrackingUri = None,
    as_json: Json = False,
) -> None:
    """The trials of a study: state, epochs, validation loss (from the tracking server)."""
    from study.study_command import print_status, status as study_status

    result = study_status(study_name, tracking_uri=tracking_uri)
    _emit(result, as_json, lambda r: print_status(Console(file=stdout, highlight=False), r))


@command(app)
def report(
    study_name: str = typer.Argument(..., metavar="STUDY", help="a study name (`study status` lists them)"),
    out: Optional[Path] = typer.Option(None, help="folder for report.md, report.json and the figures "
                                       "(default: ./report-STUDY)"),
    tracking_uri: TrackingUri = None,
    as_json: Json = False,
) -> None:
    """Each (model, prior) group's champion beside the paper's Table 1, with figures; also logged to the
    study's parent MLflow run under report/."""
    from study.report.build import build_report
    from study.report.terminal import print_report

    result = build_report(study_name, out, tracking_uri)
    _emit(result, as_json, lambda r: print_report(Console(file=stdout, highlight=False), r, r["out"]))


@command(app)
def pull(
    reference: str = typer.Argument(..., metavar="NAME[@ALIAS|/VERSION]", help="a registered model, e.g. static_mnist-hvae-vampprior@champion"),
    out: Path = typer.Option(..., help="folder to write weights.pt and config.json into"),
    tracking_uri: TrackingUri = None,
    as_json: Json = False,
) -> None:
    """Fetch a registered model from the MLflow Model Registry."""
    from study import settings
    from study.pull import pull as pull_model

    folder = pull_model(reference, out, settings.resolve_tracking_uri(tracking_uri))
    _emit({"model": reference, "out": str(folder)}, as_json, lambda r: err.print(f"pulled into {escape(r['out'])}"))


@command(app)
def train(
    dataset: str = typer.Option("static_mnist", help="static_mnist, dynamic_mnist, omniglot, caltech101, freyfaces, histopathology"),
    model: str = typer.Option("vae", help="vae, hvae, convhvae, pixelhvae"),
    prior: str = typer.Option("standard", help="standard, mog, vampprior, vampprior_data, vampprior_weighted"),
    K: int = typer.Option(500, "--K", "-K", help="pseudo-inputs / mixture components"),
    lr: float = typer.Option(5e-4, help="Adam learning rate"),
    epochs: int = typer.Option(2000, help="maximum number of epochs"),
    warmup: int = typer.Option(100, help="KL warm-up epochs (beta = epoch / warmup); 0: none"),
    patience: int = typer.Option(50, help="stop once more than this many epochs pass without validation improvement, as the paper's code; 0: never"),
    batch_size: int = typer.Option(100),
    hidden: int = typer.Option(300, help="units of the gated dense layers"),
    z1_size: int = typer.Option(40, help="latent units of the lower (or only) layer"),
    z2_size: int = typer.Option(40, help="latent units of the top layer of two-level models"),
    seed: int = typer.Option(0),
    pseudoinputs: str = typer.Option("random", help="VampPrior init: random (per-dataset N(mean, std)) or data"),
    train_limit: Optional[int] = typer.Option(None, help="use the first N training images"),
    test_limit: Optional[int] = typer.Option(None, help="score N test images, a fixed-seed subset (the same for every run)"),
    samples: int = typer.Option(5000, help="importance samples for the test log-likelihood"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    output: Optional[Path] = typer.Option(None, help="folder for the model, checkpoint, metrics and figures"),
    resume: bool = typer.Option(False, help="continue from OUTPUT/checkpoint.pt"),
    figures: bool = typer.Option(True, help="write PNG figures"),
    as_json: Json = False,
) -> None:
    """Train one configuration without Ray (debugging, reproduction), then score it on the test set."""
    from study.train_command import run_train, train_config

    config = train_config(dataset=dataset, model=model, prior=prior, K=K, lr=lr, epochs=epochs,
                          warmup=warmup, patience=patience, batch_size=batch_size, hidden=hidden,
                          z1_size=z1_size, z2_size=z2_size, seed=seed,
                          pseudoinputs=pseudoinputs, train_limit=train_limit, test_limit=test_limit,
                          samples=samples, device=device)
    result = run_train(config, output, resume=resume, figures=figures, log=err)
    _emit(result, as_json, lambda r: err.print_json(data=r))


@command(app)
def score(
    model_path: str = typer.Argument(..., metavar="MODEL", help="a saved model folder, or a registered model (models:/NAME@ALIAS)"),
    dataset: Optional[str] = typer.Option(None, help="defaults to the model's dataset"),
    split: str = typer.Option("test", help="test or val"),
    samples: int = typer.Option(5000, help="importance samples"),
    seed: Optional[int] = typer.Option(None, help="defaults to the model's training seed"),
    test_limit: Optional[int] = typer.Option(None, help="score N images, the fixed-seed subset of `study train`"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    tracking_uri: TrackingUri = None,
    as_json: Json = False,
) -> None:
    """Importance-sampled log-likelihood of a saved or registered model."""
    import tempfile

    from study.train_command import run_score

    def score_folder(folder: Path) -> dict:
        return run_score(folder, dataset=dataset, split=split, samples=samples, seed=seed, limit=test_limit,
                         device=device)

    if model_path.startswith("models:/"):
        from study import settings
        from study.pull import pull as pull_model

        with tempfile.TemporaryDirectory(prefix="vamp-score-") as tmp:
            result = {**score_folder(pull_model(model_path, Path(tmp), settings.resolve_tracking_uri(tracking_uri))),
                      "model": model_path}
    else:
        result = score_folder(Path(model_path))
    _emit(result, as_json, lambda r: err.print_json(data=r))


@command(data_app, "fetch")
def data_fetch(
    dataset: str = typer.Argument(..., help="a dataset name, or 'all'"),
    mirror: Optional[Path] = typer.Option(None, help="a folder laid out like the dataset mirror (default: $STUDY_DATA_MIRROR)"),
) -> None:
    """Download (or copy from a mirror), verify checksums, parse and cache a dataset."""
    from trainables.data import DATASETS, fetch

    names = sorted(DATASETS) if dataset == "all" else [dataset]
    for name in names:
        path = fetch(name, mirror=mirror, progress=lambda msg: err.print(escape(msg)))
        err.print(f"[green]{name}[/green]: cached at {escape(str(path))}")


def main() -> None:
    """Entry point: map errors to exit codes."""
    try:
        code = app(standalone_mode=False)
    except InputError as e:
        err.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except StudyInterrupted as e:
        err.print(f"[yellow]interrupted:[/yellow] {escape(str(e))}", soft_wrap=True)
        sys.exit(130)
    except StudyFailed as e:
        err.print(f"[red]failed:[/red] {escape(str(e))}", soft_wrap=True)
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        sys.exit(130)
    except typer.TyperException as e:  # the command line itself is wrong (usage errors: exit 2)
        e.show()
        sys.exit(getattr(e, "exit_code", 2))
    except Exception as e:  # noqa: BLE001 - a failure while running: say what and exit 1
        err.print(f"[red]failed:[/red] {type(e).__name__}: {escape(str(e))}", soft_wrap=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
