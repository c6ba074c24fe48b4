"""The dataset registry: one frozen :class:`~trainables.data.spec.DatasetSpec` per dataset of
the paper.

URLs, checksums and layouts follow ``../shared/datasets/README.txt``. Each spec names its
parser (:mod:`trainables.data.parsers`) and the encodings of its stored splits
(:mod:`trainables.data.splits`); nothing else in the package branches on a dataset's name.
"""

from __future__ import annotations

from trainables.data import parsers
from trainables.data.checksums import Checksum
from trainables.data.sources import SourceFile
from trainables.data.spec import DatasetSpec
from trainables.data.splits import BINARY, BINS256, BYTES, UNIT_FLOAT
from trainables.errors import DataError

_LAROCHELLE = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
_MNIST_URLS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)


def _amat(split: str, key: str, sha256: str) -> SourceFile:
    name = f"binarized_mnist_{split}.amat"
    return SourceFile(key, f"static_mnist/{name}", (_LAROCHELLE + name,), Checksum("sha256", sha256))


def _idx(key: str, name: str, sha256_of_content: str) -> SourceFile:
    return SourceFile(
        key,
        f"dynamic_mnist/{name}.gz",
        tuple(f"{base}{name}.gz" for base in _MNIST_URLS),
        Checksum("sha256", sha256_of_content, of="gunzipped"),
    )


_SPECS = (
    DatasetSpec(
        name="static_mnist",
        shape=(1, 28, 28),
        likelihood="bernoulli",
        dynamic=False,
        pseudoinput_mean=0.05,
        pseudoinput_std=0.01,
        files=(
            _amat("train", "train", "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d"),
            _amat("valid", "valid", "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2"),
            _amat("test", "test", "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c"),
        ),
        parser=parsers.parse_static_mnist,
        sizes=(50000, 10000, 10000),
        encodings=(BINARY, BINARY, BINARY),
        description="MNIST, Larochelle & Murray's fixed binarization",
    ),
    DatasetSpec(
        name="dynamic_mnist",
        shape=(1, 28, 28),
        likelihood="bernoulli",
        dynamic=True,
        pseudoinput_mean=0.05,
        pseudoinput_std=0.01,
        files=(
            _idx(
                "train_images",
                "train-images-idx3-ubyte",
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            ),
            _idx(
                "test_images",
                "t10k-images-idx3-ubyte",
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            ),
        ),
        parser=parsers.parse_dynamic_mnist,
        sizes=(50000, 10000, 10000),
        encodings=(BYTES, BINARY, BINARY),
        description="MNIST gray, binarized dynamically (val/test binarized once, fixed seed)",
    ),
    DatasetSpec(
        name="omniglot",
        shape=(1, 28, 28),
        likelihood="bernoulli",
        dynamic=True,
        pseudoinput_mean=0.05,
        pseudoinput_std=0.01,
        files=(
            SourceFile(
                "chardata",
                "omniglot/chardata.mat",
                ("https://raw.githubusercontent.com/yburda/iwae/master/datasets/OMNIGLOT/chardata.mat",),
                Checksum("md5", "21ecaf34373511aa7691cf2e0802aa3d"),
            ),
        ),
        parser=parsers.parse_omniglot,
        sizes=(23000, 1345, 8070),
        encodings=(UNIT_FLOAT, BINARY, BINARY),
        description="Omniglot 28x28 (Burda et al.), binarized dynamically",
    ),
    DatasetSpec(
        name="caltech101",
        shape=(1, 28, 28),
        likelihood="bernoulli",
        dynamic=False,
        pseudoinput_mean=0.5,
        pseudoinput_std=0.02,
        files=(
            SourceFile(
                "mat",
                "caltech101_silhouettes/caltech101_silhouettes_28_split1.mat",
                ("https://people.cs.umass.edu/~marlin/data/caltech101_silhouettes_28_split1.mat",),
                Checksum("sha256", "eb6735e8d84b1850fabc5590124aab1755e90c9fd28123585324398405e1e42a"),
            ),
        ),
        parser=parsers.parse_caltech101,
        sizes=(4100, 2264, 2307),
        encodings=(BINARY, BINARY, BINARY),
        description="Caltech 101 Silhouettes 28x28 (Marlin), object = 1",
    ),
    DatasetSpec(
        name="freyfaces",
        shape=(1, 28, 20),
        likelihood="logistic",
        dynamic=False,
        pseudoinput_mean=0.5,
        pseudoinput_std=0.02,
        files=(
            SourceFile(
                "pkl",
                "freyfaces/freyfaces.pkl",
                ("https://github.com/jmtomczak/vae_vampprior/raw/master/datasets/Freyfaces/freyfaces.pkl",),
                Checksum("sha256", "3b69410c6a5fd6e03f09012905168be3712373a094a776f7e58fcd0670d2138a"),
            ),
        ),
        parser=parsers.parse_freyfaces,
        sizes=(1565, 200, 200),
        encodings=(BINS256, BINS256, BINS256),
        description="Frey Faces 28x20 gray, random split with a fixed seed",
    ),
    DatasetSpec(
        name="histopathology",
        shape=(1, 28, 28),
        likelihood="logistic",
        dynamic=False,
        pseudoinput_mean=0.4,
        pseudoinput_std=0.05,
        files=(
            SourceFile(
                "archive",
                "histopathology/histopathology.pkl.tar.gz",
                (
                    "https://github.com/jmtomczak/vae_householder_flow/raw/master/datasets/"
                    "histopathologyGray/histopathology.pkl.tar.gz",
                ),
                Checksum("git-blob-sha1", "40e100f65969106cbcf3c0f6f29e70e8e7e14fe3"),
            ),
        ),
        parser=parsers.parse_histopathology,
        sizes=(6800, 2000, 2000),
        encodings=(BINS256, BINS256, BINS256),
        description="Histopathology 28x28 gray (Tomczak)",
    ),
)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in _SPECS}


def get_spec(name: str | DatasetSpec) -> DatasetSpec:
    """The spec registered as ``name`` (a spec passes through, e.g. a test's variant).

    Raises :class:`DataError` naming the dataset and the allowed names for an unknown name.
    """
    if isinstance(name, DatasetSpec):
        return name
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise DataError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}") from None
