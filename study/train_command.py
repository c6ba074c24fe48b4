"""`study train` and `study score`: one trial, no Ray, no MLflow.

Output folder of `study train` (default outputs/<dataset>-<model>-<prior>-s<seed>):
  model/            the best weights and the config that rebuilds them (trainables.artifacts)
  checkpoint.pt     the latest training state (`--resume` continues from it)
  metrics.json      the summary printed with --json, plus the per-epoch history
  figures/*.png     generations, reconstructions, pseudo-inputs, LL histogram
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from trainables.artifacts import load_model, save_model
from trainables.config import TrainConfig
from trainables.errors import InputError

CHECKPOINT = "checkpoint.pt"

#: TrainConfig's fields as `study train` and `study score` spell them.
FLAGS = {field: "--" + field.replace("_", "-") for field in TrainConfig.model_fields}


def train_config(**flags) -> TrainConfig:
    """The TrainConfig of `study train`'s flags; InputError (exit code 2) naming the flag."""
    return TrainConfig.from_dict(flags, names=FLAGS)


def _writable_folder(path: Path) -> Path:
    """Create `path` if needed and prove it writable; on failure remove what was created."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        for folder in missing:  # deepest first
            if folder.is_dir():
                folder.rmdir()
        raise InputError(f"--output {path}: not a writable folder ({e.strerror or e})") from None
    return path


def run_train(config: TrainConfig, output: Path | None, *, resume: bool, figures: bool,
              log: Console) -> dict:
    from trainables.experiment import generations, prepare, score, summary
    from trainables.figures import save_figures
    from trainables.train import Trainer

    output = Path(output or f"outputs/{config.dataset}-{config.model}-{config.prior}-s{config.seed}")
    checkpoint = output / CHECKPOINT
    if resume and not checkpoint.exists():
        raise InputError(f"--resume: {checkpoint} does not exist; run without --resume first")
    trial = prepare(config)  # bad input (device, data) fails here, before anything is written
    _writable_folder(output)
    trainer = Trainer(trial.model, trial.data, config)
    if resume:
        trainer.load(checkpoint)
    name = f"{config.dataset} {config.model}+{config.prior}"
    log.print(f"{escape(name)}: {trial.data.train.shape[0]} training images on {trial.device}")

    def on_epoch(m, t: Trainer) -> None:
        t.save(checkpoint)
        log.print(f"epoch {m.epoch:>4}/{config.epochs}  beta {m.beta:.2f}  train {m.train_loss:9.3f}  "
                  f"val {m.val_loss:9.3f}  (best {m.best_val_loss:.3f} @ {m.best_epoch})  {m.epoch_seconds:6.2f} s")

    progress = trainer.fit(on_epoch)
    log.print(f"scoring {trial.data.test.shape[0]} test images with S={config.samples} importance samples")
    scores = score(trial)
    per_example = scores.pop("per_example_ll")
    result = {**config.to_dict(), **summary(progress), **scores, "output": str(output)}
    save_model(trial.model, config, output / "model", extra={"metrics": _metrics(result)})
    (output / "metrics.json").write_text(json.dumps({**result, "history": progress.history}, indent=2))
    if figures:
        save_figures(trial.model, trial.data.test, per_example, trial.spec.shape, output / "figures",
                     title=name, generations=generations(trial.model))
    return result


def _metrics(result: dict) -> dict:
    keys = ("val_loss", "test_ll", "test_elbo", "active_units", "bits_per_dim", "samples", "test_size")
    return {k: result[k] for k in keys if k in result}


def run_score(folder: Path, *, dataset: str | None, split: str, samples: int, seed: int | None,
              limit: int | None, device: str) -> dict:
    """Score a saved model on `split` of `dataset` (default: its own); the flags that are
    TrainConfig fields are checked as such, on top of the saved config."""
    from trainables.data import DATASETS, load_dataset
    from trainables.evaluate import evaluate
    from trainables.experiment import resolve_device
    from trainables.train import test_subset

    if split not in ("test", "val"):
        raise InputError(f"--split {split!r} is not known; allowed: test, val")
    model, saved = load_model(folder)
    flags = {"samples": samples, "test_limit": limit, "device": device, "dataset": dataset or saved.dataset,
             "seed": saved.seed if seed is None else seed}
    config = saved.replace(names=FLAGS, **flags)
    ours, theirs = DATASETS[saved.dataset], DATASETS[config.dataset]
    if (ours.shape, ours.likelihood) != (theirs.shape, theirs.likelihood):
        raise InputError(f"--dataset {config.dataset}: its images {theirs.shape} ({theirs.likelihood}) do not fit "
                         f"a model of {saved.dataset} {ours.shape} ({ours.likelihood})")
    model = model.to(resolve_device(config.device))
    images = test_subset(getattr(load_dataset(config.dataset), split), config.test_limit)
    x = torch.as_tensor(images, dtype=torch.float32, device=next(model.parameters()).device)
    result = evaluate(model, x, samples=config.samples, seed=config.seed)
    result.pop("per_example_ll")
    return {"model": str(folder), "dataset": config.dataset, "split": split, **result}
