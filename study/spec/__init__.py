"""The search-space file of a study. A user writes one YAML file per study (see ``search_spaces/``)::

    name: omniglot
    dataset: omniglot
    models: [vae, hvae, convhvae, pixelhvae]
    space:
      lr: {loguniform: [1.0e-4, 5.0e-4]}      # or a list of values: [1.0e-4, 5.0e-4]
      priors:
        standard: {}
        vampprior: {K: [1000], trials: 12}   # or {K: {int_loguniform: [100, 1000]}}
    fixed: {epochs: 2000, warmup: 100, ...}  # TrainConfig fields held fixed
    search: {algorithm: tpe, seed: 0, trials_per_group: 8, max_concurrent: null, retries: 2}
    early_stopping: {grace_period: 10, reduction_factor: 3}
    resources: {cpus: 1, gpus: {vae: 0.125, hvae: 0.25}}   # or one number for every model
    evaluation: {samples: 5000, test_limit: null}
    tracking: {uri: null}
    storage: {path: null}

Three jobs, each in its own module: ``_loading`` reads the file (:func:`load_space`); ``_schema``
is the frozen :class:`StudySpec`, whose fields carry the rules (those beyond a bound are in
``_rules``); ``_messages`` words pydantic's errors as "file: dotted.field: what is allowed".
:mod:`study.search` turns a spec into groups and trial configs. Credentials are never part of
the file.
"""
from study.spec._loading import load_space, parse_space
from study.spec._schema import (EarlyStopping, Evaluation, Fixed, IntLogUniform, LogUniform, PriorOptions, Resources,
                                Search, Space, Storage, StudySpec, Tracking)

__all__ = ["EarlyStopping", "Evaluation", "Fixed", "IntLogUniform", "LogUniform", "PriorOptions", "Resources",
           "Search", "Space", "Storage", "StudySpec", "Tracking", "load_space", "parse_space"]
