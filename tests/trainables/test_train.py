"""Training: warm-up, early stopping, the optimizer, divergence, and exact resume, on real
static-MNIST images."""
import math

import pytest
import torch

from trainables.config import TrainConfig
from trainables.experiment import prepare
from trainables.optim import NormalizedAdam
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
    p = Progress()
    losses = [10, 9, 9.5, 9.7, 8, 8.1, 8.2, 8.3]
    improved = [p.record(e, v, warmup=4) for e, v in enumerate(losses, start=1)]
    assert improved == [True, True, False, False, True, False, False, False]
    assert (p.best_epoch, p.best_val_loss) == (5, 8)
    assert p.epochs_without_improvement == 3
    assert not p.finished(epochs=100, patience=4) and p.finished(epochs=100, patience=3)
    assert p.stopped_early
    # during warm-up nothing counts: epochs 2 and 3 did not improve but the counter stayed 0
    q = Progress()
    for e, v in enumerate([5, 6, 7], start=1):
        q.record(e, v, warmup=10)
    assert q.epochs_without_improvement == 0 and not q.finished(epochs=100, patience=1)


def test_patience_zero_never_stops_early():
    p = Progress()
    for e in range(1, 20):
        p.record(e, 1.0 * e, warmup=0)
    assert not p.finished(epochs=100, patience=0) and p.finished(epochs=19, patience=0)


def test_normalized_adam_ignores_the_scale_of_gradients():
    """Each tensor's gradient is divided by its norm: scaling the loss changes nothing."""
    updates = []
    for scale in (1.0, 1000.0):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(5, 3))
        opt = NormalizedAdam([w], lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            (scale * (w**2).sum()).backward()
            opt.step()
        updates.append(w.detach().clone())
    torch.testing.assert_close(updates[0], updates[1])


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
