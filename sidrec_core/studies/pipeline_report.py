"""The ``report`` pipeline stage: the run's headline table (MostPop, SASRec variants, SID LM;
HR/NDCG@{5,10}) beside the published Beauty figures, plus the SID quality metrics, read from the
stages' ``metrics/*.json`` -> ``experiments/pipeline_report.md`` and a CSV for ``dvc plots``.

Published figures (leave-one-out, ranking over all items):
SASRec with BCE as reported by S3-Rec (Zhou et al., 2020) and quoted by P5 and TIGER (Rajput et
al., 2023); the best tuned SASRec with full cross-entropy; TIGER itself; and the SIDs LETTER
(Wang et al., 2024) released for Beauty (collision rate 3.35 % at 3 levels, 197/256 level-1 codes).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from sidrec_core.config import BaseConfig, build, to_dict
from sidrec_core.io import write_text
from sidrec_core.tracking import start_run

log = logging.getLogger(__name__)

CUTS = ("hr@5", "ndcg@5", "hr@10", "ndcg@10")
# model -> (source, {metric: value}); only the figures the issues quote
PUBLISHED: dict[str, tuple[str, dict[str, float]]] = {
    "SASRec (BCE)": ("S3-Rec table, quoted by P5 and TIGER", {"hr@10": 0.0605, "ndcg@10": 0.0318}),
    "SASRec (CE, tuned)": (
        "best tuned SASRec published for this split",
        {"hr@10": 0.0740, "ndcg@10": 0.0423},
    ),
    "TIGER": ("Rajput et al., 2023", {"hr@10": 0.0648, "ndcg@10": 0.0384}),
}
LETTER_SIDS = {"collision_rate_before": 0.0335, "utilization/0": 197 / 256}


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """``report`` section: where the pipeline report and its plot data go."""

    output: str = "experiments/pipeline_report.md"
    plot_data: str = "experiments/plots/headline.csv"


def _load(path: Path) -> dict[str, Any] | None:
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
    return (
        f"{name} (loss={cfg.loss}, similarity={cfg.similarity}, negatives={cfg.negatives}{feats})"
    )


def collect_rows(metrics_dir: Path, params: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model found in ``metrics_dir``: name, stage file, test HR/NDCG@{5,10}."""
    rows: list[dict[str, Any]] = []
    base = _load(metrics_dir / "baselines.json") or {}
    for key, name in (("mostpop", "MostPop"), ("random", "Random")):
        if isinstance(base.get(key), dict):
            rows.append({"model": name, "file": "baselines.json", **base[key]})
    for path in sorted(metrics_dir.glob("train_sasrec*.json")):
        if path.stem.endswith("_curves"):
            continue
        data = _load(path)
        if data:
            rows.append({"model": _label(path.stem, params), "file": path.name, **data})
    data = _load(metrics_dir / "eval_sidlm.json")
    if data:
        rows.append(
            {"model": "SID LM (generative, constrained beam)", "file": "eval_sidlm.json", **data}
        )
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
    rows: list[dict[str, Any]], sids: dict[str, Any] | None, profile: str, dataset: str
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
        "| model | source | HR@10 | NDCG@10 |",
        "|---|---|---|---|",
    ]
    for name, (src, figs) in PUBLISHED.items():
        lines.append(f"| {name} | {src} | {_fmt(figs['hr@10'])} | {_fmt(figs['ndcg@10'])} |")
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
    return "\n".join(lines + [""] + sid_quality_lines(sids))


def write_plot_data(rows: list[dict[str, Any]], path: Path) -> None:
    """CSV (model, hr_at_10, ndcg_at_10) of this run and the published rows, for dvc plots."""
    out = ["model,hr_at_10,ndcg_at_10"]
    for r in rows:
        out.append(f'"{r["model"]}",{r.get("test/hr@10", "")},{r.get("test/ndcg@10", "")}')
    for name, (_, figs) in PUBLISHED.items():
        out.append(f'"{name} [published]",{figs["hr@10"]},{figs["ndcg@10"]}')
    write_text(path, "\n".join(out) + "\n")


def run_report(params: dict[str, Any]) -> dict[str, Any]:
    """DVC stage ``report`` -> ``report.output`` (markdown) and ``report.plot_data`` (CSV)."""
    base = build(BaseConfig, params.get("base"), "base")
    cfg = build(ReportConfig, params.get("report"), "report")
    metrics_dir = Path(base.metrics_dir)
    rows = collect_rows(metrics_dir, params)
    sids = _load(metrics_dir / "build_sids.json")
    dataset = next((r.get("dataset") for r in rows if r.get("dataset")), None) or str(
        (params.get("data") or {}).get("name", "beauty")
    )
    with start_run(
        "report",
        {"base": to_dict(base), "report": to_dict(cfg)},
        dataset=dataset,
        profile=base.profile,
        metrics_dir=base.metrics_dir,
    ) as run:
        write_text(cfg.output, render(rows, sids, base.profile, dataset))
        write_plot_data(rows, Path(cfg.plot_data))
        run.log_artifact(cfg.output)
        run.record(num_models=len(rows), has_sid_metrics=int(sids is not None))
        return dict(run.metrics, **run.extra)
