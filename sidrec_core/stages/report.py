"""DVC stage ``report``: the run's headline table (MostPop, SASRec variants, SID LM, RPG;
HR/NDCG@{5,10}) beside published Beauty figures, plus the SID quality metrics, read from the
stages' ``metrics/*.json`` -> ``report.output`` and ``report.plot_data``.

Every published row names its source (paper + table, or repository + file); all are Amazon-2014
5-core Beauty, leave-one-out, ranking over all items. LETTER (Wang et al., CIKM 2024) released
SIDs for Beauty with a 3.35% collision rate at 3 levels and 197/256 level-1 codes used.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from sidrec_core.config import build
from sidrec_core.data.dataset import DataConfig, load_prepared
from sidrec_core.data.split import LeaveOneOut, leave_one_out
from sidrec_core.io import write_text
from sidrec_core.metrics import decode_ranks, hit_rate
from sidrec_core.rpg.published import PUBLISHED as RPG_PUBLISHED
from sidrec_core.stages.context import stage_context

log = logging.getLogger(__name__)

CUTS = ("hr@5", "ndcg@5", "hr@10", "ndcg@10")
CORNAC_TIGER = "PreferredAI/cornac, `cornac/models/tiger/README.md`"
# model -> (source, {metric: value})
PUBLISHED: dict[str, tuple[str, dict[str, float]]] = {
    "SASRec (one-negative BCE)": (
        "TIGER paper (Rajput et al., NeurIPS 2023), Table 2",
        {"hr@5": 0.0387, "ndcg@5": 0.0249, "hr@10": 0.0605, "ndcg@10": 0.0318},
    ),
    "SASRec (tuned; winner: cornac's batch BCE, hidden 128, lr 5e-4, dropout 0.2, history 50)": (
        f"{CORNAC_TIGER}, table 'Best TIGER configs vs tuned SASRec (beauty)'",
        {"hr@5": 0.0508, "ndcg@5": 0.0348, "hr@10": 0.0740, "ndcg@10": 0.0423},
    ),
    "TIGER": (
        "TIGER paper (Rajput et al., NeurIPS 2023), Table 2",
        {"hr@5": 0.0454, "ndcg@5": 0.0321, "hr@10": 0.0648, "ndcg@10": 0.0384},
    ),
    "TIGER reproduction, GRID recipe (RK-Means SIDs, 4+4-layer encoder-decoder)": (
        f"{CORNAC_TIGER}, table 'Detailed tuning, base encoder', beauty/grid/rkmeans",
        {"hr@5": 0.0340, "ndcg@5": 0.0216, "hr@10": 0.0564, "ndcg@10": 0.0288},
    ),
    "TIGER reproduction, PAISCHER/Mender recipe (6+6 layers, RQ-VAE SIDs)": (
        f"{CORNAC_TIGER}, table 'Detailed tuning, base encoder', beauty/paischer/rqvae",
        {"hr@5": 0.0419, "ndcg@5": 0.0270, "hr@10": 0.0634, "ndcg@10": 0.0338},
    ),
    **RPG_PUBLISHED,
}
# The eSASRec benchmark ranks with the user's history items removed (``filter_viewed=True``,
# blondered/transformer_benchmark ``src/evaluation/common.py``), on the same 22,363 Beauty users
# (experiments/sasrec_ss_recipe.md): its rows compare with this run's ``test_unseen/*`` only.
TB = "blondered/transformer_benchmark, `README.md`, 'Amazon datasets' table (Beauty)"
PUBLISHED_UNSEEN: dict[str, tuple[str, dict[str, float]]] = {
    "SASRec + sampled softmax (grid-searched on validation)": (
        TB,
        {"hr@10": 0.0921, "ndcg@10": 0.0531},
    ),
    "eSASRec (LiGR blocks + sampled softmax; arXiv 2508.06450)": (
        TB,
        {"hr@10": 0.0928, "ndcg@10": 0.0523},
    ),
    "CBiT": (TB, {"hr@10": 0.0905, "ndcg@10": 0.0537}),
}
LETTER_SIDS = {"collision_rate_before": 0.0335, "utilization/0": 197 / 256}
# groups of a target's interactions in the training part: [0, 1), [1, 5), [5, 20), [20, 100), 100+
POPULARITY_EDGES = (1, 5, 20, 100)


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """``report`` section: where the pipeline report and its plot data go."""

    output: str = "experiments/pipeline_report.md"
    plot_data: str = "experiments/plots/headline.csv"


def load_metrics(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("unreadable metrics file %s", path)
        return None


def _label(stage_file: str, params: dict[str, Any]) -> str:
    """``SASRec (loss=ce, similarity=dot, ...)`` from the sasrec params the stage ran with."""
    from sidrec_core.models.sasrec import SASRecConfig

    cfg = build(SASRecConfig, params.get("sasrec"), "sasrec")
    suffix = stage_file.removeprefix("train_sasrec").strip("_")
    feats = f", sid_features={cfg.sid_features}" if cfg.sid_features != "none" else ""
    name = f"SASRec {suffix}" if suffix else "SASRec"
    neg = cfg.negatives_label
    rows = f"rows={cfg.train_rows}"
    return f"{name} (loss={cfg.loss}, {rows}, similarity={cfg.similarity}, negatives={neg}{feats})"


RPG_DECODING = {"exact": "exact scoring", "graph": "graph-constrained beam"}


def collect_rows(metrics_dir: Path, params: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model found in ``metrics_dir``: name, stage file, test HR/NDCG@{5,10}."""
    rows: list[dict[str, Any]] = []
    base = load_metrics(metrics_dir / "baselines.json") or {}
    for key, name in (("mostpop", "MostPop"), ("random", "Random")):
        if isinstance(base.get(key), dict):
            rows.append({"model": name, "file": "baselines.json", **base[key]})
    for path in sorted(metrics_dir.glob("train_sasrec*.json")):
        if path.stem.endswith("_curves"):
            continue
        data = load_metrics(path)
        if data:
            rows.append({"model": _label(path.stem, params), "file": path.name, **data})
    for name, label in (
        ("eval_sidlm", "SID LM (generative)"),
        ("rl_sidlm", "SID LM + GRPO (same users, same decoding)"),
        ("eval_rpg", "RPG (parallel long SIDs, {})"),
    ):
        data = load_metrics(metrics_dir / f"{name}.json")
        if data:
            label = label.format(RPG_DECODING.get(data.get("decoding"), data.get("decoding")))
            rows.append({"model": label, "file": f"{name}.json", **data})
    return rows


def _fmt(x: Any, pct: bool = False) -> str:
    if not isinstance(x, (int, float)):
        return "—"
    return f"{100 * x:.2f}%" if pct else f"{x:.4f}"


def sid_quality_lines(sids: dict[str, Any] | None) -> list[str]:
    lines = ["## SID quality (`metrics/build_sids.json`)", ""]
    if not sids:
        return lines + [
            "No `build_sids.json` in the metrics folder: the SID stage has not run.",
            "",
        ]
    util = sids.get("utilization") or []
    perp = sids.get("perplexity") or []
    rows = [
        (
            "collision rate before resolution",
            _fmt(sids.get("collision_rate_before"), True),
            _fmt(LETTER_SIDS["collision_rate_before"], True),
        ),
        ("collision rate after resolution", _fmt(sids.get("collision_rate_after"), True), "—"),
        ("level-1 utilisation", _fmt(util[0] if util else None), "0.7695 (197/256)"),
    ]
    rows += [(f"level-{i + 1} utilisation", _fmt(u), "—") for i, u in enumerate(util) if i]
    rows += [(f"level-{i + 1} perplexity", f"{p:.1f}", "—") for i, p in enumerate(perp)]
    for key in ("max_bucket", "gini", "recon_mse", "fit_seconds"):
        rows.append((key, _fmt(sids.get(key)), "—"))
    lines += ["| metric | this run | LETTER released Beauty SIDs |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return lines + [""]


def render(
    rows: list[dict[str, Any]],
    sids: dict[str, Any] | None,
    profile: str,
    dataset: str,
    loo: LeaveOneOut | None = None,
) -> str:
    lines = [
        "# Pipeline report",
        "",
        f"Profile `{profile}`, dataset `{dataset}`; leave-one-out, ranking over all items, "
        "test split, generated by the `report` stage from `metrics/*.json`.",
        "",
        "## Headline (test)",
        "",
        "| model | " + " | ".join(c.upper() for c in CUTS) + " | metrics file |",
        "|---|" + "---|" * (len(CUTS) + 1),
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | "
            + " | ".join(_fmt(r.get(f"test/{c}")) for c in CUTS)
            + f" | `{r['file']}` |"
        )
    if not rows:
        lines.append("| (no model metrics found) |" + " |" * (len(CUTS) + 1))
    lines += [
        "",
        "Published Beauty figures (HR@10 = Recall@10 with one target):",
        "",
        "| model | source | " + " | ".join(c.upper() for c in CUTS) + " |",
        "|---|---|" + "---|" * len(CUTS),
    ]
    for name, (src, figs) in PUBLISHED.items():
        lines.append(f"| {name} | {src} | " + " | ".join(_fmt(figs.get(c)) for c in CUTS) + " |")
    lines += unseen_lines(rows)
    gen = next((r for r in rows if r["file"] == "eval_sidlm.json"), None)
    if gen:
        lines += [
            "",
            "SID LM candidates: invalid rate "
            f"{_fmt(gen.get('test/invalid_rate', gen.get('invalid_rate')))}, duplicate rate "
            f"{_fmt(gen.get('test/duplicate_rate', gen.get('duplicate_rate')))}, "
            f"{_fmt(gen.get('test/users_per_second', gen.get('users_per_second')))} "
            "users/s.",
        ]
    if dataset != "beauty":
        lines += ["", f"Note: this run used `{dataset}`; the published figures are for Beauty."]
    groups = popularity_lines(rows, loo) if loo is not None else []
    return "\n".join(lines + [""] + groups + sid_quality_lines(sids))


def unseen_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The rows scored with history items removed beside the published rows of that protocol."""
    measured = [r for r in rows if isinstance(r.get("test_unseen/hr@10"), (int, float))]
    lines = [
        "",
        "History items removed from the ranking (the eSASRec benchmark's protocol; Beauty has no "
        "repeated purchase, so no test target is removed):",
        "",
        "| model | source | HR@10 | NDCG@10 |",
        "|---|---|---|---|",
    ]
    for r in measured:
        lines.append(
            f"| {r['model']} | this run, `{r['file']}` `test_unseen/*` | "
            f"{_fmt(r['test_unseen/hr@10'])} | {_fmt(r.get('test_unseen/ndcg@10'))} |"
        )
    for name, (src, figs) in PUBLISHED_UNSEEN.items():
        lines.append(f"| {name} | {src} | {_fmt(figs['hr@10'])} | {_fmt(figs['ndcg@10'])} |")
    return lines


def group_means(
    values: np.ndarray, counts: np.ndarray, edges: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-user ``values`` [U] grouped by ``counts`` [U] cut at ``edges`` (groups ``[0, e1)``,
    ``[e1, e2)``, ..., ``[e_last, inf)``) -> (share of users [G], mean value [G]; nan: empty)."""
    values, groups = np.asarray(values, dtype=np.float64), np.digitize(counts, edges)
    if values.shape != groups.shape:
        raise ValueError(f"values {values.shape} and counts {groups.shape} differ in shape")
    size = np.bincount(groups, minlength=len(edges) + 1).astype(np.float64)
    total = np.bincount(groups, weights=values, minlength=len(edges) + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return size / max(len(values), 1), np.where(size > 0, total / size, np.nan)


def popularity_lines(rows: list[dict[str, Any]], loo: LeaveOneOut) -> list[str]:
    """Each model's test HR@10 per group of its targets' training interactions (from the stored
    per-user ranks), beside the share of validation and test targets in each group, and the test
    HR@10 the model would have at the validation targets' mix of groups."""
    counts = loo.train_item_counts()
    at = {
        split: counts[[s[k] for s in loo.dataset.sequences]]
        for split, k in (("valid", -2), ("test", -1))
    }
    share = {
        split: group_means(np.zeros(len(c)), c, POPULARITY_EDGES)[0] for split, c in at.items()
    }
    lows = (0, *POPULARITY_EDGES)
    groups = [f"[{lo}, {hi})" for lo, hi in zip(lows[:-1], POPULARITY_EDGES, strict=True)]
    groups.append(f"{lows[-1]}+")
    lines = [
        "## Test HR@10 by the target's interactions in training",
        "",
        "Users grouped by how often their target occurs in the training part (the items before "
        "each user's last two). A test target is the user's last item, so it is often newer and "
        "rarer than the validation target; the last column re-weights the groups' test HR@10 by "
        "the validation targets' shares, separating that shift from the model's own valid-test gap "
        "(`valid/hr@10` on the users its stage validated on).",
        "",
        "| | " + " | ".join(groups) + " | test HR@10 | valid HR@10 | test HR@10 at valid's mix |",
        "|---|" + "---|" * (len(groups) + 3),
    ]
    for split in ("valid", "test"):
        cells = " | ".join(_fmt(x, pct=True) for x in share[split])
        lines.append(f"| share of {split} targets | {cells} | | | |")
    for r in rows:
        text = r.get("test/ranks")
        ranks = decode_ranks(text) if isinstance(text, str) else None
        if ranks is None or len(ranks) != len(at["test"]) or int(text.split(":")[1]) < 10:
            continue
        hr = group_means(hit_rate(ranks, 10), at["test"], POPULARITY_EDGES)[1]
        # undefined when a group validation targets fall in holds no test target
        mix = np.nansum(share["valid"] * hr) if not np.isnan(hr[share["valid"] > 0]).any() else None
        cells = " | ".join(_fmt(None if np.isnan(x) else float(x)) for x in hr)
        lines.append(
            f"| {r['model']} | {cells} | {_fmt(r.get('test/hr@10'))} | "
            f"{_fmt(r.get('valid/hr@10'))} | {_fmt(mix)} |"
        )
    return lines + [""]


# the SID table's quality in the headline (every other quality metric is in build_sids.json)
HEADLINE_SID = ("collision_rate_before", "collision_rate_after", "gini", "recon_mse")


def _row_key(row: dict[str, Any]) -> str:
    stem = row["file"].removesuffix(".json")
    return row["model"].lower() if stem == "baselines" else stem


def headline(
    rows: list[dict[str, Any]], sids: dict[str, Any] | None, walls: dict[str, float]
) -> dict[str, float]:
    """The few numbers ``dvc metrics show`` prints (the stages' own ``metrics/*.json`` are plain
    outputs, hundreds of keys together): test HR/NDCG@{5,10} per model row (and with history
    items removed, ``test_unseen``, where the row has it), the SID table's
    headline quality and each stage's wall seconds, keyed ``<row>/test/<cut>``,
    ``build_sids/<metric>`` and ``<stage>/wall_seconds``."""
    out: dict[str, float] = {}
    for row in rows:
        for split in ("test", "test_unseen"):
            for cut in CUTS:
                value = row.get(f"{split}/{cut}")
                if isinstance(value, (int, float)):
                    out[f"{_row_key(row)}/{split}/{cut}"] = float(value)
    for key in HEADLINE_SID:
        if sids and isinstance(sids.get(key), (int, float)):
            out[f"build_sids/{key}"] = float(sids[key])
    out.update({f"{stage}/wall_seconds": float(w) for stage, w in walls.items()})
    return out


def write_plot_data(rows: list[dict[str, Any]], path: Path) -> None:
    """CSV (model, hr_at_10, ndcg_at_10) of this run and the published rows, for dvc plots."""
    out = ["model,hr_at_10,ndcg_at_10"]
    for r in rows:
        out.append(f'"{r["model"]}",{r.get("test/hr@10", "")},{r.get("test/ndcg@10", "")}')
    for name, (_, figs) in PUBLISHED.items():
        out.append(f'"{name} [published]",{figs["hr@10"]},{figs["ndcg@10"]}')
    write_text(path, "\n".join(out) + "\n")


def run(params: dict[str, Any]) -> dict[str, Any]:
    """Read ``metrics/*.json`` -> the markdown report and its plot CSV."""
    with stage_context("report", params, report=ReportConfig, data=DataConfig) as ctx:
        cfg = ctx.cfg["report"]
        loo = leave_one_out(load_prepared(ctx.cfg["data"].prepared_dir))
        metrics_dir = Path(ctx.base.metrics_dir)
        rows = collect_rows(metrics_dir, params)
        sids = load_metrics(metrics_dir / "build_sids.json")
        from sidrec_core.studies.pipeline import load_pipeline  # imports the stage registry

        # the stages' metrics files the report reads: its metrics deps in dvc.yaml
        deps = [Path(d) for d in load_pipeline()["report"].deps if d.startswith("metrics/")]
        files = {d.stem: load_metrics(metrics_dir / d.name) or {} for d in deps}
        found = [d.get("dataset") for d in (*files.values(), *rows) if d.get("dataset")]
        dataset = found[0] if found else "?"
        write_text(cfg.output, render(rows, sids, ctx.base.profile, dataset, loo))
        write_plot_data(rows, Path(cfg.plot_data))
        ctx.run.log_artifact(cfg.output)
        ctx.run.set_tags({"dataset": dataset})
        walls = {n: d["wall_seconds"] for n, d in files.items() if "wall_seconds" in d}
        ctx.run.record(
            dataset=dataset,
            num_models=len(rows),
            has_sid_metrics=int(sids is not None),
            **headline(rows, sids, walls),
        )
        return ctx.result()
