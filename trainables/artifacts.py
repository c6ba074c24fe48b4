"""A saved model: a folder with `weights.pt` (a state dict of tensors, loaded with
weights_only=True, so loading never runs code) and `config.json` (the TrainConfig that rebuilds
the architecture, the dataset's shape and likelihood, and the sha256 of the weights)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from trainables.config import TrainConfig
from trainables.data import DATASETS
from trainables.errors import InputError
from trainables.models import Model, build_model

FORMAT = "vamp-study-model/1"
WEIGHTS = "weights.pt"
CONFIG = "config.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model(model: Model, config: TrainConfig, folder: Path, extra: dict | None = None) -> Path:
    """Write the model's current weights and config into `folder` (created if needed)."""
    return save_weights(model.state_dict(), config, folder, extra)


def save_weights(state: dict, config: TrainConfig, folder: Path, extra: dict | None = None) -> Path:
    """Write a model's state dict and config into `folder` (created if needed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS
    torch.save({k: v.detach().cpu() for k, v in state.items()}, weights.with_suffix(".tmp"))
    os.replace(weights.with_suffix(".tmp"), weights)
    meta = {"format": FORMAT, "config": config.to_dict(), "weights_sha256": sha256_file(weights),
            **(extra or {})}
    (folder / CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return folder


def read_config(folder: Path) -> tuple[TrainConfig, dict]:
    """The config of a saved model and the whole JSON it is part of; InputError naming the file
    (and the field, as `config.<field>`) if `folder` is not a saved model or its config is wrong."""
    path = Path(folder) / CONFIG
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{folder}: not a saved model (no {CONFIG}); expected a folder written by "
                         "`study train --output` or `study pull`") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise InputError(f"{path}: format {found!r} is not {FORMAT!r}")
    if not isinstance(meta.get("config"), dict):
        raise InputError(f"{path}: config must be a mapping of TrainConfig fields, got {meta.get('config')!r}")
    names = {field: f"config.{field}" for field in meta["config"]}
    return TrainConfig.from_dict(meta["config"], names=names, source=str(path)), meta


def load_model(folder: Path, device: torch.device | str = "cpu") -> tuple[Model, TrainConfig]:
    """Rebuild the architecture from config.json and load weights.pt (checksum verified)."""
    folder = Path(folder)
    config, meta = read_config(folder)
    weights = folder / WEIGHTS
    actual = sha256_file(weights)
    if actual != meta["weights_sha256"]:
        raise InputError(f"{weights}: sha256 {actual} does not match config.json's {meta['weights_sha256']}")
    spec = DATASETS[config.dataset]
    # The training images only seed initial values, which the saved weights replace.
    placeholder = torch.zeros(config.K, spec.dim)
    model = build_model(config, spec, placeholder)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.to(device).eval(), config
