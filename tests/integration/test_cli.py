"""The `study` command as a user runs it: a real process, exit codes, stdout, files."""
import json
import math

import pytest

from tests.helpers import study

SMALL = ["--K", "20", "--epochs", "2", "--warmup", "2", "--train-limit", "500", "--test-limit", "30",
         "--samples", "40", "--device", "cpu"]


@pytest.fixture
def env(data_cache, tmp_path):
    empty_mirror = tmp_path / "empty-mirror"
    empty_mirror.mkdir()
    return {"STUDY_CACHE_DIR": str(data_cache), "STUDY_DATA_MIRROR": str(empty_mirror)}


def test_train_prints_one_json_object_and_score_reproduces_it(env, tmp_path):
    out = tmp_path / "run"
    r = study("train", "--dataset", "static_mnist", "--model", "hvae", "--prior", "vampprior", *SMALL,
              "--output", out, "--json", env=env)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)  # the whole of stdout is one JSON object
    for key in ("val_loss", "test_ll", "test_elbo", "active_units", "epochs", "seconds_per_epoch"):
        assert key in result
    assert result["epochs"] == 2 and len(result["active_units"]) == 2
    assert result["test_ll"] >= result["test_elbo"]
    assert "bits_per_dim" not in result
    for name in ("model/weights.pt", "model/config.json", "checkpoint.pt", "metrics.json",
                 "figures/generations.png", "figures/reconstructions.png", "figures/pseudo_inputs.png",
                 "figures/ll_histogram.png"):
        assert (out / name).is_file(), name

    s = study("score", out / "model", "--samples", "40", "--test-limit", "30", "--device", "cpu", "--json", env=env)
    assert s.returncode == 0, s.stderr
    # same weights, data and seed: the same number, to float32 rounding (the BLAS may split a
    # reduction differently under load)
    assert math.isclose(json.loads(s.stdout)["test_ll"], result["test_ll"], rel_tol=1e-6)


def test_resume_continues_the_run(env, tmp_path):
    out = tmp_path / "run"
    first = study("train", "--model", "vae", "--prior", "standard", *SMALL, "--epochs", "1", "--output", out,
                  "--json", "--no-figures", env=env)
    assert first.returncode == 0, first.stderr
    second = study("train", "--model", "vae", "--prior", "standard", *SMALL, "--output", out, "--resume",
                   "--json", "--no-figures", env=env)
    assert second.returncode == 0, second.stderr
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]


def test_gray_data_report_bits_per_dim(env, tmp_path):
    r = study("train", "--dataset", "freyfaces", "--model", "vae", "--prior", "mog", *SMALL, "--train-limit",
              "300", "--output", tmp_path / "frey", "--json", "--no-figures", env=env)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["bits_per_dim"] == pytest.approx(-result["test_ll"] / (560 * math.log(2)))
    assert result["test_ll"] >= result["test_elbo"]


BAD_TRAIN = [
    (["--model", "transformer"], "--model 'transformer' is not known; allowed: convhvae, hvae, pixelhvae, vae"),
    (["--prior", "flow"], "--prior 'flow' is not known; allowed: mog, standard, vampprior"),
    (["--K", "0"], "--K must be an integer >= 1, got 0"),
    (["--lr", "0"], "--lr must be a positive finite number, got 0.0"),
    (["--lr", "-1e-4"], "--lr must be a positive finite number"),
    (["--epochs", "0"], "--epochs must be an integer >= 1"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["--train-limit", "0"], "--train-limit must be an integer >= 1"),
    (["--dataset", "cifar10"], "--dataset 'cifar10' is not known; allowed: caltech101, dynamic_mnist"),
    (["--dataset", "omniglot"], "omniglot/chardata.mat"),
    (["--dataset", "histopathology"], "histopathology/histopathology.pkl.tar.gz"),
    (["--device", "cuda"], "--device cuda: no CUDA device"),
    (["--device", "tpu"], "--device 'tpu' is not known"),
    (["--pseudoinputs", "zeros"], "--pseudoinputs 'zeros' is not known; allowed: data, random"),
    (["--resume"], "--resume"),
    (["--K", "many"], "Invalid value for '--K'"),
]


@pytest.mark.parametrize("args,message", BAD_TRAIN, ids=[" ".join(a) for a, _ in BAD_TRAIN])
def test_bad_train_input_exits_2_and_writes_nothing(env, tmp_path, args, message):
    out = tmp_path / "out"
    r = study("train", *SMALL, "--output", out, *args, "--json", env=env)
    assert r.returncode == 2, r.stderr
    assert message in " ".join(r.stderr.split()), r.stderr
    assert r.stdout == ""
    assert not out.exists()


def test_unwritable_output_folder_exits_2(env, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    r = study("train", *SMALL, "--output", blocker / "sub" / "run", env=env)
    assert r.returncode == 2 and "not a writable folder" in r.stderr
    assert blocker.read_text() == "not a folder" and not (tmp_path / "sub").exists()


@pytest.mark.parametrize("args,message", [
    (["score", "{tmp}"], "not a saved model"),
    (["score", "{tmp}", "--split", "train"], "--split 'train' is not known"),
    (["data", "fetch", "mnist-m"], "'mnist-m'"),
    (["data", "fetch", "caltech101", "--mirror", "{tmp}/nowhere"], "does not exist"),
])
def test_other_bad_input_exits_2(env, tmp_path, args, message):
    r = study(*[a.format(tmp=tmp_path) for a in args], env={**env, "STUDY_CACHE_DIR": str(tmp_path / "cache")})
    assert r.returncode == 2, r.stderr
    assert message in " ".join(r.stderr.split())


def test_data_fetch_caches_from_a_mirror(shared_datasets, tmp_path):
    r = study("data", "fetch", "caltech101", "--mirror", shared_datasets,
              env={"STUDY_CACHE_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "caltech101.npz").is_file()
    again = study("data", "fetch", "caltech101", env={"STUDY_CACHE_DIR": str(tmp_path)})
    assert again.returncode == 0  # cached: no mirror needed
