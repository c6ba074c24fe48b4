"""One configuration object for a training run (plain data, validated once, where it is made).

Every constraint on a field lives here, on the field (``Annotated`` / ``Field``), and a
constraint that relates fields would go in a ``model_validator(mode="after")``: a TrainConfig
that exists is valid. Callers word the errors for their users with :func:`config_error`: the
CLI names its flags (``--lr``), a search space its dotted fields (``space.lr``), a saved model
its file (``model/config.json: config.lr``).

A leaf module (pydantic only, no torch): the names of datasets, models and priors are spelled
here as types, and ``tests/trainables/test_config.py`` checks that they are exactly the keys of
the registries (``trainables.data.DATASETS``, ``trainables.models.MODELS``,
``trainables.priors.PRIORS``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainables.errors import InputError

DatasetName = Literal["static_mnist", "dynamic_mnist", "omniglot", "caltech101", "freyfaces", "histopathology"]
ModelName = Literal["vae", "hvae", "convhvae", "pixelhvae"]
PriorName = Literal["standard", "mog", "vampprior", "vampprior_data", "vampprior_weighted"]

#: Priors that are mixtures with K components (the only ones for which K means anything).
MIXTURE_PRIORS = frozenset({"mog", "vampprior", "vampprior_data", "vampprior_weighted"})

#: The fields a study's search chooses per trial; a study holds the others fixed.
SEARCHED_FIELDS = ("model", "prior", "lr", "K", "seed")

#: A count of at least one (epochs, units, images, samples).
Count = Annotated[int, Field(ge=1)]
#: A count that may be zero (warm-up epochs, patience: 0 switches the feature off).
CountOrZero = Annotated[int, Field(ge=0)]
#: A learning rate.
Rate = Annotated[float, Field(gt=0, allow_inf_nan=False)]
#: Where the VampPrior's pseudo-inputs start: "random" N(mean, std) per dataset, "data" training images.
PseudoInputs = Literal["random", "data"]


class TrainConfig(BaseModel):
    """Everything that defines one trial. Defaults are the paper's settings (Sec. 4)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    dataset: DatasetName = "static_mnist"
    model: ModelName = "vae"
    prior: PriorName = "standard"
    K: Count = 500  # pseudo-inputs / mixture components
    lr: Rate = 5e-4
    epochs: Count = 2000
    warmup: CountOrZero = 100  # KL warm-up epochs: beta = epoch / warmup
    patience: CountOrZero = 50  # early stopping: epochs without validation improvement
    batch_size: Count = 100
    seed: int = 0
    z1_size: Count = 40  # latent units of the lower (or only) layer
    z2_size: Count = 40  # latent units of the top layer of two-level models
    hidden: Count = 300  # units of the gated dense layers
    pseudoinputs: PseudoInputs = "random"
    train_limit: Count | None = None  # use the first N training images
    test_limit: Count | None = None  # use the first N test images
    samples: Count = 5000  # importance samples for the test log-likelihood
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @property
    def mixture(self) -> bool:
        """Whether the prior has K components."""
        return self.prior in MIXTURE_PRIORS

    def to_dict(self) -> dict:
        """The fields as plain data (what `from_dict` reads back)."""
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, names: Mapping[str, str] | None = None,
                  source: str = "") -> "TrainConfig":
        """Validate `data`; InputError worded by :func:`config_error` (`names`, `source`)."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as error:
            raise config_error(error, names, source) from None

    def replace(self, *, names: Mapping[str, str] | None = None, source: str = "", **changes) -> "TrainConfig":
        """A copy with `changes`, validated like `from_dict`."""
        return self.from_dict({**self.to_dict(), **changes}, names=names, source=source)


def config_error(error: ValidationError, names: Mapping[str, str] | None = None, source: str = "") -> InputError:
    """An InputError with one line per problem of a TrainConfig, `<source>: <name> <problem>`.

    `names` maps a field to what the caller's user calls it (a CLI flag, a dotted field of a
    file; a field left out keeps its own name); `source` names the file ('' for none)."""
    lines = []
    for problem in error.errors():
        field = str(problem["loc"][0]) if problem["loc"] else ""
        where = (names or {}).get(field, field)
        line = f"{where} {_problem(problem, field)}" if where else _problem(problem, field)
        lines.append(f"{source}: {line}" if source else line)
    return InputError("\n".join(lines))


def choices(field: str) -> tuple[str, ...]:
    """The values a name field of TrainConfig allows (empty for other fields)."""
    info = TrainConfig.model_fields.get(field)
    values = get_args(info.annotation) if info is not None else ()
    return values if all(isinstance(v, str) for v in values) else ()


def _problem(problem: Mapping[str, Any], field: str) -> str:
    """What is wrong, in the project's words (pydantic's for the kinds not met here)."""
    kind, value, ctx = problem["type"], problem.get("input"), problem.get("ctx") or {}
    if kind == "literal_error":
        return f"{value!r} is not known; allowed: {', '.join(sorted(choices(field)))}"
    if kind == "greater_than_equal":
        return f"must be an integer >= {ctx['ge']}, got {value}"
    if kind == "greater_than":
        kind_of_number = "a positive finite number" if ctx["gt"] == 0 else f"a finite number > {ctx['gt']}"
        return f"must be {kind_of_number}, got {value}"
    if kind == "finite_number":
        return f"must be a finite number, got {value}"
    if kind == "int_type":
        return f"must be an integer, got {value!r}"
    if kind == "float_type":
        return f"must be a number, got {value!r}"
    if kind == "string_type":
        return f"must be a string, got {value!r}"
    if kind == "extra_forbidden":
        return f"is not a field of a training configuration; allowed: {', '.join(sorted(TrainConfig.model_fields))}"
    return problem["msg"]
