"""Fetching: mirror copy, checksums, failures that leave nothing behind, cache validity."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from trainables.data import (
    DATASETS,
    Checksum,
    DatasetSpec,
    SourceFile,
    cache_dir,
    fetch,
    load_dataset,
    mirror_dir,
    verify,
)
from trainables.data import cache as cache_files
from trainables.data.splits import StoredSplits
from trainables.errors import DataError, InputError

FREY = "freyfaces/freyfaces.pkl"


def _closed_port_url(path: str) -> str:
    """A URL on 127.0.0.1 at a port nothing listens on (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{path}"


def _with_urls(spec: DatasetSpec, url_of: Callable[[SourceFile], str]) -> DatasetSpec:
    """``spec`` with each source file's URLs replaced by the one URL ``url_of(file)``."""
    files = tuple(dataclasses.replace(f, urls=(url_of(f),)) for f in spec.files)
    return dataclasses.replace(spec, files=files)


def _offline(spec: DatasetSpec) -> DatasetSpec:
    """``spec`` with every URL pointing at a closed local port."""
    return _with_urls(spec, lambda f: _closed_port_url(f.filename))


def _served_by(spec: DatasetSpec, base_url: str) -> DatasetSpec:
    """``spec`` downloading each file from ``<base_url>/<file.path>`` (a mirror-layout folder)."""
    return _with_urls(spec, lambda f: f"{base_url}/{f.path}")


@dataclasses.dataclass
class _Served:
    url: str  # http://127.0.0.1:PORT, no trailing slash
    requests: list[str]  # "GET /path 200" per request, in order
    stop: Callable[[], None]


@pytest.fixture
def http_folder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], _Served]]:
    """Serve a folder over real HTTP on 127.0.0.1 (stdlib ``http.server`` in a thread):
    ``serve(folder)`` returns its base URL and the requests it saw. Proxy variables are
    cleared so urllib connects directly; every server is stopped at the end."""
    for name in list(os.environ):
        if name.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
            monkeypatch.delenv(name)
    servers: list[ThreadingHTTPServer] = []

    def serve(folder: Path) -> _Served:
        requests: list[str] = []

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
                super().__init__(*args, directory=str(folder), **kwargs)

            def log_request(self, code="-", size="-"):  # type: ignore[no-untyped-def]
                requests.append(f"{self.command} {self.path} {int(code)}")

            def log_message(self, format, *args):  # type: ignore[no-untyped-def]  # quiet
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, name="http-folder", daemon=True)
        thread.start()
        servers.append(server)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)

        return _Served(f"http://127.0.0.1:{server.server_address[1]}", requests, stop)

    yield serve
    for server in servers:
        server.shutdown()  # returns at once for a server already stopped
        server.server_close()


def _with_sha256_of(spec: DatasetSpec, path: Path) -> DatasetSpec:
    """``spec`` (one source file) with that file's checksum replaced by the sha256 of ``path``."""
    (source,) = spec.files
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return dataclasses.replace(spec, files=(dataclasses.replace(source, checksum=Checksum("sha256", digest)),))


def _mirror_with(tmp_path: Path, shared_datasets: Path, rel: str) -> Path:
    """A writable mirror folder holding a copy of ``shared_datasets/rel``."""
    mirror = tmp_path / "mirror"
    (mirror / rel).parent.mkdir(parents=True)
    shutil.copyfile(shared_datasets / rel, mirror / rel)
    return mirror


def _assert_no_leftovers(cache: Path) -> None:
    leftovers = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
    assert leftovers == [], f"left behind: {leftovers}"


# --------------------------------------------------------------------------- registry / API


def test_registry_keys_and_specs() -> None:
    assert set(DATASETS) == {
        "static_mnist", "dynamic_mnist", "omniglot", "caltech101", "freyfaces", "histopathology"
    }
    for name, spec in DATASETS.items():
        assert spec.name == name
        assert spec.likelihood in {"bernoulli", "logistic"}
        assert spec.dim == int(np.prod(spec.shape))
        assert spec.files and all(f.urls for f in spec.files)
    assert DATASETS["freyfaces"].shape == (1, 28, 20) and DATASETS["freyfaces"].dim == 560
    assert [DATASETS[n].dynamic for n in ("dynamic_mnist", "omniglot", "static_mnist")] == [True, True, False]
    assert (DATASETS["histopathology"].pseudoinput_mean, DATASETS["histopathology"].pseudoinput_std) == (0.4, 0.05)


def test_unknown_dataset_lists_allowed_names(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        fetch("mnist", cache=tmp_path)
    assert "'mnist'" in str(err.value) and "static_mnist" in str(err.value) and "histopathology" in str(err.value)
    with pytest.raises(InputError):
        load_dataset("nope", cache=tmp_path)


def test_env_folders(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("STUDY_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "vamp-study"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "vamp-study"
    monkeypatch.setenv("STUDY_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("STUDY_DATA_MIRROR", raising=False)
    assert mirror_dir() is None
    monkeypatch.setenv("STUDY_DATA_MIRROR", str(tmp_path))
    assert mirror_dir() == tmp_path


# --------------------------------------------------------------------------- checksums


@pytest.mark.parametrize(
    ("algorithm", "digest"),
    [
        ("sha256", hashlib.sha256(b"hello\n").hexdigest()),
        ("md5", "b1946ac92492d2347c6235b4d2611184"),
        ("git-blob-sha1", "ce013625030ba8dba906f756967f9e9ca394464a"),  # `git hash-object`
    ],
)
def test_verify_algorithms(tmp_path: Path, algorithm: str, digest: str) -> None:
    path = tmp_path / "hello.txt"
    path.write_bytes(b"hello\n")
    verify(path, Checksum(algorithm, digest))
    with pytest.raises(DataError, match="checksum mismatch"):
        verify(path, Checksum(algorithm, "0" * len(digest)))


def test_verify_gunzipped_content(tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(b"content"))
    verify(path, Checksum("sha256", hashlib.sha256(b"content").hexdigest(), of="gunzipped"))
    with pytest.raises(DataError):
        verify(path, Checksum("sha256", hashlib.sha256(path.read_bytes()).hexdigest(), of="gunzipped"))


def test_checksum_mismatch_caches_nothing(tmp_path: Path, shared_datasets: Path) -> None:
    mirror = _mirror_with(tmp_path, shared_datasets, FREY)
    bad = mirror / FREY
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        fetch("freyfaces", mirror=mirror, cache=cache)
    message = str(err.value)
    assert "freyfaces.pkl" in message and "sha256" in message
    assert DATASETS["freyfaces"].files[0].checksum.digest in message
    assert hashlib.sha256(bytes(data)).hexdigest() in message
    _assert_no_leftovers(cache)


# --------------------------------------------------------------------------- fetching


def test_fetch_is_idempotent(tmp_path: Path, shared_datasets: Path) -> None:
    cache = tmp_path / "cache"
    messages: list[str] = []
    path = fetch("caltech101", mirror=shared_datasets, cache=cache, progress=messages.append)
    assert path == cache / "caltech101.npz" and path.is_file()
    assert any("copying" in m for m in messages) and any("verifying" in m for m in messages)
    before = path.stat()
    time.sleep(0.01)
    again: list[str] = []
    assert fetch("caltech101", mirror=shared_datasets, cache=cache, progress=again.append) == path
    after = path.stat()
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)
    assert again == []
    assert sorted(p.name for p in cache.iterdir()) == ["caltech101.npz"]


def test_cached_dataset_needs_no_mirror(
    monkeypatch: pytest.MonkeyPatch, data_cache: Path
) -> None:
    monkeypatch.setenv("STUDY_CACHE_DIR", str(data_cache))
    monkeypatch.delenv("STUDY_DATA_MIRROR", raising=False)
    assert fetch("freyfaces") == data_cache / "freyfaces.npz"
    assert load_dataset("freyfaces").train.shape == (1565, 560)


def test_env_mirror_and_cache_are_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, shared_datasets: Path
) -> None:
    mirror = _mirror_with(tmp_path, shared_datasets, FREY)
    monkeypatch.setenv("STUDY_DATA_MIRROR", str(mirror))
    monkeypatch.setenv("STUDY_CACHE_DIR", str(tmp_path / "env-cache"))
    assert fetch(_offline(DATASETS["freyfaces"])) == tmp_path / "env-cache" / "freyfaces.npz"


def test_missing_mirror_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        fetch("freyfaces", mirror=tmp_path / "no-such-folder", cache=tmp_path / "cache")


def test_unfetchable_file_says_where_to_put_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("STUDY_DATA_MIRROR", raising=False)
    spec = _offline(DATASETS["omniglot"])
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        fetch(spec, cache=cache)
    message = str(err.value)
    assert message.startswith("omniglot: cannot fetch chardata.mat (http://127.0.0.1:")
    assert "omniglot/chardata.mat" in message and "STUDY_DATA_MIRROR" in message and "--mirror" in message
    _assert_no_leftovers(cache)

    empty_mirror = tmp_path / "mirror"
    empty_mirror.mkdir()
    spec = _offline(DATASETS["histopathology"])
    with pytest.raises(DataError) as err:
        fetch(spec, mirror=empty_mirror, cache=cache)
    message = str(err.value)
    assert f"not in mirror {empty_mirror}" in message
    assert f"put it at {empty_mirror / 'histopathology' / 'histopathology.pkl.tar.gz'}" in message
    _assert_no_leftovers(cache)


def test_download_from_http_server_verifies_and_loads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, shared_datasets: Path, http_folder
) -> None:
    """No mirror: the file comes over real HTTP (a local server serving ../shared/datasets),
    its checksum is verified, it is parsed and cached, and the dataset loads."""
    monkeypatch.delenv("STUDY_DATA_MIRROR", raising=False)
    served = http_folder(shared_datasets)
    spec = _served_by(DATASETS["freyfaces"], served.url)
    cache = tmp_path / "cache"
    messages: list[str] = []
    assert fetch(spec, cache=cache, progress=messages.append) == cache / "freyfaces.npz"
    assert served.requests == [f"GET /{FREY} 200"]
    assert f"freyfaces: downloading {served.url}/{FREY}" in messages
    assert "freyfaces: verifying freyfaces.pkl (sha256)" in messages
    assert sorted(p.name for p in cache.iterdir()) == ["freyfaces.npz"]
    splits = load_dataset(spec, cache=cache)
    assert (splits.train.shape, splits.val.shape, splits.test.shape) == ((1565, 560), (200, 560), (200, 560))
    assert served.requests == [f"GET /{FREY} 200"]  # loading reads the cache, no second download


def test_downloaded_corrupt_file_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, shared_datasets: Path, http_folder
) -> None:
    monkeypatch.delenv("STUDY_DATA_MIRROR", raising=False)
    folder = _mirror_with(tmp_path, shared_datasets, FREY)
    data = bytearray((folder / FREY).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / FREY).write_bytes(bytes(data))
    served = http_folder(folder)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="checksum mismatch") as err:
        fetch(_served_by(DATASETS["freyfaces"], served.url), cache=cache)
    message = str(err.value)
    assert "freyfaces.pkl" in message and "sha256" in message
    assert DATASETS["freyfaces"].files[0].checksum.digest in message
    assert hashlib.sha256(bytes(data)).hexdigest() in message
    assert served.requests == [f"GET /{FREY} 200"]
    _assert_no_leftovers(cache)


@pytest.mark.parametrize("failure", ["not found", "refused"])
def test_failed_download_says_where_to_put_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, http_folder, failure: str
) -> None:
    """A 404 from a live server, or a server that has gone (connection refused): the error
    names the URL tried and where to put the file, and the cache is left empty."""
    monkeypatch.delenv("STUDY_DATA_MIRROR", raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    served = http_folder(empty)
    if failure == "refused":
        served.stop()
    spec = _served_by(DATASETS["freyfaces"], served.url)
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        fetch(spec, cache=cache)
    message = str(err.value)
    url = f"{served.url}/{FREY}"
    assert message.startswith(f"freyfaces: cannot fetch freyfaces.pkl ({url}: ")
    assert f"put it at DIR/{FREY}" in message and "STUDY_DATA_MIRROR=DIR" in message and "--mirror" in message
    assert served.requests == ([f"GET /{FREY} 404"] if failure == "not found" else [])
    _assert_no_leftovers(cache)


# --------------------------------------------------------------------------- failures mid-way


def test_corrupt_file_with_correct_checksum_leaves_nothing(tmp_path: Path, shared_datasets: Path) -> None:
    mirror = _mirror_with(tmp_path, shared_datasets, FREY)
    truncated = mirror / FREY
    truncated.write_bytes(truncated.read_bytes()[: 100_000])
    spec = _with_sha256_of(DATASETS["freyfaces"], truncated)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="freyfaces.pkl"):
        fetch(spec, mirror=mirror, cache=cache)
    _assert_no_leftovers(cache)


def test_interrupted_parse_leaves_nothing(tmp_path: Path, shared_datasets: Path) -> None:
    real_parser = DATASETS["freyfaces"].parser

    def interrupted(spec, files):  # type: ignore[no-untyped-def]
        real_parser(spec, files)  # the real work happens, then the user hits Ctrl-C
        raise KeyboardInterrupt

    spec = dataclasses.replace(DATASETS["freyfaces"], parser=interrupted)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        fetch(spec, mirror=shared_datasets, cache=cache)
    _assert_no_leftovers(cache)


def test_interrupted_cache_write_leaves_nothing(tmp_path: Path) -> None:
    class Exploding:
        def __array__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            raise KeyboardInterrupt

    spec = DATASETS["freyfaces"]
    ok = np.zeros((2, spec.dim), np.uint8)
    with pytest.raises(KeyboardInterrupt):
        cache_files.write(tmp_path / "freyfaces.npz", spec, StoredSplits(ok, ok, Exploding()))  # type: ignore[arg-type]
    _assert_no_leftovers(tmp_path)


def test_wrong_layout_is_a_data_error(tmp_path: Path, shared_datasets: Path) -> None:
    """Caltech's .mat given where Frey's pickle is expected (checksum injected)."""
    mirror = tmp_path / "mirror"
    (mirror / "freyfaces").mkdir(parents=True)
    shutil.copyfile(shared_datasets / "caltech101_silhouettes/caltech101_silhouettes_28_split1.mat", mirror / FREY)
    spec = _with_sha256_of(DATASETS["freyfaces"], mirror / FREY)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="freyfaces.pkl"):
        fetch(spec, mirror=mirror, cache=cache)
    _assert_no_leftovers(cache)


# --------------------------------------------------------------------------- cache validity


def test_unreadable_cache_file_is_rebuilt(tmp_path: Path, shared_datasets: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    target = cache / "freyfaces.npz"
    target.write_bytes(b"not a zip file")
    assert fetch("freyfaces", mirror=shared_datasets, cache=cache) == target
    good = load_dataset("freyfaces", cache=cache)
    assert good.train.shape == (1565, 560)
    assert sorted(p.name for p in cache.iterdir()) == ["freyfaces.npz"]


def test_cache_with_corrupt_data_is_rebuilt_on_load(tmp_path: Path, shared_datasets: Path) -> None:
    cache = tmp_path / "cache"
    target = fetch("freyfaces", mirror=shared_datasets, cache=cache)
    reference = load_dataset("freyfaces", cache=cache)
    data = bytearray(target.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside the train array: headers stay valid, the CRC does not
    target.write_bytes(bytes(data))
    assert cache_files.is_valid(target, DATASETS["freyfaces"])
    rebuilt = load_dataset("freyfaces", mirror=shared_datasets, cache=cache)
    np.testing.assert_array_equal(rebuilt.train, reference.train)
    assert target.read_bytes() != bytes(data)  # the corrupt file was replaced


def test_other_format_version_is_rebuilt(tmp_path: Path, shared_datasets: Path) -> None:
    cache = tmp_path / "cache"
    target = fetch("freyfaces", mirror=shared_datasets, cache=cache)
    with np.load(target) as npz:
        arrays = dict(npz)
    arrays["format"] = np.int64(0)
    with open(target, "wb") as f:
        np.savez(f, **arrays)
    assert not cache_files.is_valid(target, DATASETS["freyfaces"])
    before = target.stat().st_mtime_ns
    time.sleep(0.01)
    fetch("freyfaces", mirror=shared_datasets, cache=cache)
    assert target.stat().st_mtime_ns != before
    with np.load(target) as npz:
        assert int(npz["format"]) == cache_files.CACHE_FORMAT
        assert str(npz["dataset"]) == "freyfaces"
        assert list(npz["encodings"]) == ["bins256"] * 3
