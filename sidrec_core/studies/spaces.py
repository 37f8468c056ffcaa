"""The tuning mode's search spaces, declared per model like the studies in ``registry.py``: the
stages a trial runs and reuses, the searched params keys and their domains, and the published
starting points queued before TPE samples."""

from __future__ import annotations

import dataclasses
from typing import Any

import optuna

from sidrec_core.config import flatten
from sidrec_core.stages import resolve_params


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched params key: ``choices`` (categorical) or ``low``..``high`` (float, log).
    ``when=(key, value)`` makes it conditional: searched only in trials where the earlier
    param ``key`` took ``value`` (otherwise the params file's value stands)."""

    key: str
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = True
    when: tuple[str, Any] | None = None

    def applies(self, chosen: dict[str, Any]) -> bool:
        return self.when is None or chosen.get(self.when[0]) == self.when[1]

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a point of this param's domain."""
        if self.choices:
            return any(
                isinstance(value, bool) == isinstance(c, bool) and value == c for c in self.choices
            )
        assert self.low is not None and self.high is not None
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return number and self.low <= value <= self.high

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.key, list(self.choices))
        assert self.low is not None and self.high is not None
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)


@dataclasses.dataclass(frozen=True)
class Tunable:
    """A model's search: the stages a trial runs and reuses, the space, and the published
    starting points queued before TPE samples (each a full assignment of the space, with its
    source); the launch's default is queued after them (``queued_starts``)."""

    name: str
    run: tuple[str, ...]
    reuse: tuple[str, ...]
    space: tuple[Param, ...]
    starts: tuple[tuple[dict[str, Any], str], ...] = ()
    epochs_key: str = ""  # the trial's training length, which sets the pruner's warm-up

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's overrides, conditional params included only where they apply."""
        chosen: dict[str, Any] = {}
        for p in self.space:
            if p.applies(chosen):
                chosen[p.key] = p.suggest(trial)
        return chosen

    def default_point(self, params: dict[str, Any]) -> dict[str, Any] | None:
        """The launch's resolved values of the space's keys (conditional keys only where they
        apply), or None when one of them lies outside the space (e.g. the smoke profile's
        tiny models): such a default is not a point TPE could sample."""
        resolved = flatten(resolve_params(params))
        point: dict[str, Any] = {}
        for p in self.space:
            if p.applies(point):
                if not p.contains(resolved.get(p.key)):
                    return None
                point[p.key] = resolved[p.key]
        return point


TUNABLES: dict[str, Tunable] = {
    t.name: t
    for t in (
        # cornac's grid (PreferredAI/cornac, cornac/models/tiger/README.md, "Best TIGER configs
        # vs tuned SASRec"): loss x hidden x lr x dropout x history. Its "bce" is bce_shared
        # here; averaged as cornac does it sits on a plateau on Beauty (valid NDCG@10 < .001
        # for 20 epochs, experiments/sasrec_bce.md), so its weighting is searched too. Queued
        # first: cornac's winner with the weighting that learns (then the launch's default).
        Tunable(
            "sasrec",
            run=("train_sasrec",),
            reuse=("prepare",),
            epochs_key="sasrec.train.epochs",
            space=(
                Param("sasrec.loss", ("ce", "bce", "bce_shared")),
                Param(
                    "sasrec.bce_shared_balanced", (True, False), when=("sasrec.loss", "bce_shared")
                ),
                Param("sasrec.hidden_dim", (64, 128)),
                Param("sasrec.train.lr", low=5e-4, high=5e-3),
                Param("sasrec.dropout", (0.2, 0.5)),
                Param("sasrec.max_history", (20, 50)),
            ),
            starts=(
                (
                    {
                        "sasrec.loss": "bce_shared",
                        "sasrec.bce_shared_balanced": True,
                        "sasrec.hidden_dim": 128,
                        "sasrec.train.lr": 5e-4,
                        "sasrec.dropout": 0.2,
                        "sasrec.max_history": 50,
                    },
                    "cornac's tuned SASRec (cornac/models/tiger/README.md), its bce loss with "
                    "each row's positive weighted like its negatives together",
                ),
            ),
        ),
        Tunable(
            "sidlm",
            run=("train_sidlm", "eval_sidlm"),
            reuse=("prepare", "embed", "build_sids"),
            epochs_key="sidlm.train.epochs",
            space=(
                Param("sidlm.hidden_size", (128, 192, 256)),
                Param("sidlm.num_layers", (2, 4, 6)),
                Param("sidlm.attention_dropout", (0.0, 0.1, 0.2)),
                Param("sidlm.train.lr", low=5e-4, high=5e-3),
                Param("sidlm.train.weight_decay", (0.0, 0.01, 0.05)),
            ),
        ),
        # Issue 34's recipe search: the regularisation, step count and loss weighting that TIGER-
        # class recipes use and the default lacks (experiments/sidlm_recipe_probe.md), with the
        # sizes kept where one trial trains in <= 30 minutes on one CPU thread (the probe's
        # all-together run: 12 epochs at batch 64, 1,294 s on a loaded core). Queued first: the
        # probe's all-together configuration, then the step count alone.
        Tunable(
            "sidlm_recipe",
            run=("train_sidlm", "eval_sidlm"),
            reuse=("prepare", "embed", "build_sids"),
            epochs_key="sidlm.train.epochs",
            space=(
                Param("sidlm.embedding_dropout", (0.0, 0.1, 0.2, 0.3)),
                Param("sidlm.residual_dropout", (0.0, 0.1, 0.2)),
                Param("sidlm.attention_dropout", (0.0, 0.1)),
                Param("sidlm.num_layers", (4, 6)),
                Param("sidlm.train.lr", low=5e-4, high=3e-3),
                Param("sidlm.train.batch_size", (64, 128, 256)),
                Param("sidlm.train.epochs", (12, 16)),
                Param("sidlm.first_item_targets", ("keep", "drop")),
                Param("sidlm.loss_normalization", ("batch", "tokens")),
            ),
            starts=(
                (
                    {
                        "sidlm.embedding_dropout": 0.1,
                        "sidlm.residual_dropout": 0.1,
                        "sidlm.attention_dropout": 0.1,
                        "sidlm.num_layers": 4,
                        "sidlm.train.lr": 0.0011,
                        "sidlm.train.batch_size": 64,
                        "sidlm.train.epochs": 12,
                        "sidlm.first_item_targets": "drop",
                        "sidlm.loss_normalization": "tokens",
                    },
                    "every change of experiments/sidlm_recipe_probe.md together (one seed: test "
                    ".0589 / .0313 against the default's .0547 / .0292)",
                ),
                (
                    {
                        "sidlm.embedding_dropout": 0.0,
                        "sidlm.residual_dropout": 0.0,
                        "sidlm.attention_dropout": 0.1,
                        "sidlm.num_layers": 4,
                        "sidlm.train.lr": 0.001,
                        "sidlm.train.batch_size": 64,
                        "sidlm.train.epochs": 12,
                        "sidlm.first_item_targets": "keep",
                        "sidlm.loss_normalization": "batch",
                    },
                    "the default with batch 64 and lr 1e-3 alone, more and smaller steps with no "
                    "other change (a one-seed run on another machine, not in this repository, "
                    "scored above the all-together recipe)",
                ),
            ),
        ),
    )
}


def get_tunable(name: str) -> Tunable:
    if name not in TUNABLES:
        raise KeyError(f"unknown model '{name}' to tune; known: {', '.join(TUNABLES)}")
    return TUNABLES[name]
