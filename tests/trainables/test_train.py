"""Training: warm-up, early stopping, the optimizer, divergence, and exact resume, on real
static-MNIST images."""
import math
from dataclasses import asdict

import pytest
import torch

from tests.helpers import BINARY, GRAY, small
from trainables.config import TrainConfig
from trainables.experiment import generations, prepare
from trainables.train import Diverged, Progress, Trainer, kl_weight


@pytest.fixture
def cached(data_cache, monkeypatch):
    monkeypatch.setenv("STUDY_CACHE_DIR", str(data_cache))
    return data_cache


def small_config(**kw):
    base = dict(dataset="static_mnist", model="vae", prior="vampprior", K=20, hidden=64, epochs=3,
                warmup=2, train_limit=600, test_limit=50, samples=20, device="cpu")
    return TrainConfig(**{**base, **kw})


def test_kl_weight_warms_up_linearly():
    assert [kl_weight(e, 4) for e in (1, 2, 4, 9)] == [0.25, 0.5, 1.0, 1.0]
    assert kl_weight(1, 0) == 1.0


def test_early_stopping_counts_after_warmup_and_remembers_the_best():
    losses = [10, 9, 9.5, 9.7, 8, 8.1, 8.2, 8.3]
    for patience, stops in ((3, False), (2, True)):  # stops after more than `patience`
        p = Progress()
        improved = [p.record(e, v, warmup=4, patience=patience) for e, v in enumerate(losses, start=1)]
        assert improved == [True, True, False, False, True, False, False, False]
        assert (p.best_epoch, p.best_val_loss) == (5, 8)
        assert p.epochs_without_improvement == 3
        assert p.stopped_early == stops and p.finished(epochs=100) == stops
    # during warm-up nothing counts: epochs 2 and 3 did not improve but the counter stayed 0
    q = Progress()
    for e, v in enumerate([5, 6, 7], start=1):
        q.record(e, v, warmup=10, patience=1)
    assert q.epochs_without_improvement == 0 and not q.finished(epochs=100)


def test_patience_zero_never_stops_early():
    p = Progress()
    for e in range(1, 20):
        p.record(e, 1.0 * e, warmup=0, patience=0)
    assert not p.finished(epochs=100) and p.finished(epochs=19) and not p.stopped_early


def _progress_state(trainer: Trainer) -> dict:
    return asdict(trainer.progress)


def test_reading_finished_changes_nothing(cached):
    """`Trainer.finished` is a read: the same answer twice, the progress unchanged, whether the
    run goes on, ended at max epochs, or stopped early (the flag is set by the epoch that spent
    the patience, not by whoever asks)."""
    trial = prepare(small_config(epochs=5, warmup=0, patience=1))
    trainer = Trainer(trial.model, trial.data, trial.config)
    before = _progress_state(trainer)
    assert [trainer.finished, trainer.finished] == [False, False] and _progress_state(trainer) == before

    trainer.progress.record(1, 5.0, warmup=0, patience=1)
    trainer.progress.record(2, 6.0, warmup=0, patience=1)
    trainer.progress.record(3, 7.0, warmup=0, patience=1)  # patience spent: stopped early here
    before = _progress_state(trainer)
    assert before["stopped_early"]
    assert [trainer.finished, trainer.finished] == [True, True] and _progress_state(trainer) == before

    legacy = Progress(epoch=2, best_val_loss=5.0, best_epoch=1, epochs_without_improvement=1)
    before = asdict(legacy)
    assert [legacy.finished(epochs=3), legacy.finished(epochs=3)] == [False, False] and asdict(legacy) == before


def test_a_checkpoint_without_the_early_stopping_flag_loads_as_stopped(cached, tmp_path):
    """A checkpoint written before `record` set the flag (the old `finished` set it on reading)."""
    config = small_config(epochs=5, warmup=0, patience=1)
    trial = prepare(config)
    trainer = Trainer(trial.model, trial.data, config)
    trainer.progress = Progress(epoch=3, best_val_loss=5.0, best_epoch=1, epochs_without_improvement=2)
    trainer.save(tmp_path / "checkpoint.pt")
    again = Trainer(trial.model, trial.data, config)
    again.load(tmp_path / "checkpoint.pt")
    assert again.progress.stopped_early and again.finished


def test_training_lowers_the_validation_loss(cached):
    trial = prepare(small_config(epochs=4))
    trainer = Trainer(trial.model, trial.data, trial.config)
    first = trainer.validate()[0]
    progress = trainer.fit()
    assert progress.best_val_loss < first - 20  # nats per image, from ~540 at initialisation
    assert [h["epoch"] for h in progress.history] == [1, 2, 3, 4]
    assert [h["beta"] for h in progress.history] == [0.5, 1.0, 1.0, 1.0]
    # the model ends with the best weights
    assert trainer.validate()[0] == pytest.approx(progress.best_val_loss, rel=1e-3)


def test_resume_from_checkpoint_equals_the_uninterrupted_run(cached, tmp_path):
    """Two epochs, checkpoint, a new process-like start from the file, two more epochs: the same
    weights, optimizer state and history as four epochs in one go (dynamic binarization too)."""
    config = small_config(dataset="static_mnist", epochs=4, model="hvae", prior="vampprior_weighted")
    straight = prepare(config)
    full = Trainer(straight.model, straight.data, config)
    full.fit()

    first = prepare(config.replace(epochs=2))
    part = Trainer(first.model, first.data, first.config)
    part.fit()
    part.save(tmp_path / "checkpoint.pt")
    torch.manual_seed(12345)  # whatever happens in between must not matter

    second = prepare(config)
    resumed = Trainer(second.model, second.data, config)
    resumed.load(tmp_path / "checkpoint.pt")
    resumed.fit()

    def without_clock(history):
        return [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in history]

    assert without_clock(resumed.progress.history) == without_clock(full.progress.history)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_dynamic_binarization_draws_new_images_each_epoch(cached, tmp_path):
    trial = prepare(small_config(dataset="dynamic_mnist", epochs=1))
    assert not set(trial.data.train.unique().tolist()) <= {0.0, 1.0}  # probabilities are kept
    assert set(trial.data.val.unique().tolist()) == {0.0, 1.0}  # validation binarized once
    torch.manual_seed(0)
    a = torch.bernoulli(trial.data.train[:5])
    b = torch.bernoulli(trial.data.train[:5])
    assert not torch.equal(a, b)


def test_a_diverging_run_raises(cached):
    trial = prepare(small_config(epochs=2))
    with torch.no_grad():
        next(trial.model.parameters()).fill_(math.nan)
    with pytest.raises(Diverged, match="epoch 1"):
        Trainer(trial.model, trial.data, trial.config).fit()


def test_the_figures_ask_the_model_how_many_images_to_generate():
    """Generation is pixel by pixel for an autoregressive decoder: 16 images, not 64; the gray
    likelihood, not a dataset's name, says that bits per dimension are reported."""

    assert [generations(small(m, "standard")) for m in ("vae", "hvae", "convhvae", "pixelhvae")] == [64, 64, 64, 16]
    assert [small("vae", "standard", spec).likelihood.reports_bits_per_dim for spec in (BINARY, GRAY)] == [False, True]


def test_a_larger_patience_given_on_resuming_continues_a_run_that_stopped_early(cached, tmp_path):
    trial = prepare(small_config(epochs=5, warmup=0, patience=1))
    trainer = Trainer(trial.model, trial.data, trial.config)
    trainer.progress = Progress(epoch=3, best_val_loss=5.0, best_epoch=1, epochs_without_improvement=2,
                                stopped_early=True)
    trainer.save(tmp_path / "checkpoint.pt")
    for patience, stopped in ((1, True), (10, False), (0, False)):
        again = Trainer(trial.model, trial.data, small_config(epochs=5, warmup=0, patience=patience))
        again.load(tmp_path / "checkpoint.pt")
        assert again.finished == stopped, patience
