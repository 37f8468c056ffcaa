"""The tuning report: best params, history (table + plot), fANOVA importances, the best trial
retrained over seeds against the retrained default, and the best as a params file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.trial import TrialState

from sidrec_core.io import write_text
from sidrec_core.studies import markdown as md
from sidrec_core.studies import tuning as tn
from sidrec_core.studies.pipeline import PROJECT_ROOT
from sidrec_core.studies.report import pyplot, save_png
from sidrec_core.studies.spaces import Tunable
from sidrec_core.studies.stats import diff_ci, mean_ci, paired_test
from sidrec_core.studies.tuning import OBJECTIVE, TEST_KEYS, TuneOptions


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}" if abs(x) < 1e-3 else f"{x:.4f}"
    return str(x)


def _shown(location: str) -> str:  # reports are read on other machines
    return location.replace(f"{PROJECT_ROOT}/", "")


def pruners_used(trials: list[optuna.trial.FrozenTrial]) -> str:
    """``median, from epoch 5 of 20: trials 23-30``: each trial's pruner, grouped."""
    groups: dict[str, list[int]] = {}
    for t in trials:
        groups.setdefault(t.user_attrs.get(tn.PRUNER, "not recorded"), []).append(t.number)
    return "; ".join(f"{name}: trials {_ranges(nums)}" for name, nums in groups.items())


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def importances(ostudy: optuna.Study) -> dict[str, float] | str:
    """Optuna's fANOVA importances over the complete trials, or why there are none."""
    complete = ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return "fewer than 2 complete trials"
    try:
        return optuna.importance.get_param_importances(
            ostudy, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
        )
    except (RuntimeError, ValueError) as exc:
        return f"not computable ({exc})"


def history_row(tun: Tunable, t: optuna.trial.FrozenTrial) -> str:
    """A trial's row of the history table: state, objective, test and secondary figures, last
    reported epoch, minutes (none for a failed trial: a dead worker's ends when one notices)."""
    value = _fmt(float(t.value)) if t.value is not None else "—"
    tests = [
        _fmt(float(t.user_attrs[k])) if k in t.user_attrs else "—"
        for k in ("test/ndcg@10", "test/hr@10", *tun.secondary)
    ]
    last = max(t.intermediate_values) if t.intermediate_values else "—"
    ran = t.duration and t.state != TrialState.FAIL
    minutes = f"{t.duration.total_seconds() / 60:.1f}" if ran else "—"
    shown = ", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in t.params.items())
    state = t.state.name.lower()
    if tn.DUPLICATE_OF in t.user_attrs:
        state += f" (duplicate of running #{t.user_attrs[tn.DUPLICATE_OF]})"
    return md.row([t.number, state, value, *tests, last, minutes, shown])


def versus_default(
    ostudy: optuna.Study,
    params: dict[str, Any],
    retrain: dict[str, dict[str, float]],
    retrain_default: dict[str, dict[str, float]],
) -> list[str]:
    """The retrained best against the retrained default (``{seed: figures}``), paired over
    seeds; adopt the best only when its objective's paired 95% CI lies above 0."""
    best = {int(s): m for s, m in retrain.items()}
    base = {int(s): m for s, m in retrain_default.items()}
    lines = ["", "## Best against the default, paired over seeds", ""]
    if tn.best_is_default(ostudy, params):
        return [*lines, "The best trial's params are the defaults: nothing to compare."]
    if not base:
        return [*lines, "Not yet: the default has not been retrained."]
    lines += [
        f"Seeds both have: {sorted(set(best) & set(base))}. Difference = best − default, "
        "mean with its paired 95% CI (Student t) and the paired t-test's p.",
        "",
        *md.table(["metric", "best", "default", "best − default", "p"]),
    ]
    decision = None
    for key in (OBJECTIVE, *TEST_KEYS):
        a = {s: float(m[key]) for s, m in best.items() if key in m}
        b = {s: float(m[key]) for s, m in base.items() if key in m}
        if not a or not b:
            continue
        diff, p = paired_test(a, b)
        hw = diff_ci(a, b)
        cells = [_fmt(mean_ci(list(v.values()))[0]) for v in (a, b)]
        change = "—" if diff is None else md.pm(diff, hw, _fmt)
        lines.append(md.row([key, *cells, change, "undefined" if p is None else f"{p:.3f}"]))
        if key == OBJECTIVE and diff is not None and not np.isnan(hw):
            decision = diff - hw > 0
    lines.append("")
    if decision is None:
        lines.append("No decision yet: fewer than 2 seeds retrained for both.")
    elif decision:
        lines.append(
            f"The best beats the default on `{OBJECTIVE}` beyond seed noise (CI above 0): "
            "adopt its params as the `params.yaml` defaults."
        )
    else:
        lines.append(
            f"The best does not beat the default on `{OBJECTIVE}` beyond seed noise (CI "
            "reaches 0): keep the default."
        )
    return lines


def plot_history(ostudy: optuna.Study, path: Path) -> Path:
    trials = [t for t in ostudy.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    xs = [t.number for t in trials]
    ys = [float(t.value) for t in trials]
    fig, ax = pyplot().subplots(figsize=(5, 3.2))
    ax.scatter(xs, ys, s=12, label="complete trial")
    if ys:
        ax.plot(xs, np.maximum.accumulate(ys), color="tab:orange", label="best so far")
    for t in ostudy.get_trials(deepcopy=False, states=(TrialState.PRUNED,)):
        if t.intermediate_values:
            step = max(t.intermediate_values)
            ax.scatter([t.number], [t.intermediate_values[step]], marker="x", color="grey", s=12)
    ax.set_xlabel("trial")
    ax.set_ylabel(OBJECTIVE)
    ax.legend(fontsize=7)
    return save_png(fig, path)


def write_tune_report(
    tun: Tunable, ostudy: optuna.Study, params: dict[str, Any], opts: TuneOptions
) -> list[Path]:
    """``<out>/tune/<model>/report.md`` (+ history PNG, best_params.yaml). Returns the paths."""
    folder = opts.folder(tun.name)
    best = ostudy.best_trial
    trials = ostudy.get_trials(deepcopy=False)
    lines = [
        f"# Tuning `{tun.name}` (profile `{opts.profile}`)",
        "",
        f"Seeded TPE over {len(tun.space)} params, objective `{OBJECTIVE}` (maximise), pruned "
        f"on the per-epoch validation values ({pruners_used(trials)}), budget {opts.n_trials} "
        f"finished trials. Trials: {md.state_counts(trials)}.",
        f"Command: `python bench/tune.py --model {tun.name} --profile {opts.profile} "
        f"--n-trials {opts.n_trials}{''.join(f' --set {kv}' for kv in opts.sets)}`; "
        f"storage `{_shown(opts.tune_storage(tun.name))}`.",
    ]
    for t in trials:
        if tn.START in t.user_attrs:
            lines += [f"Trial {t.number} is queued, not sampled: {t.user_attrs[tn.START]}."]
    lines += ["", "## Search space", ""]
    for p in tun.space:
        dom = ", ".join(map(str, p.choices)) if p.choices else f"[{p.low}, {p.high}] (log)"
        cond = f" (only where `{p.when[0]}` = {p.when[1]})" if p.when else ""
        lines.append(f"- `{p.key}`: {dom}{cond}")
    lines += [
        "",
        f"## Best trial: #{best.number}, {OBJECTIVE} = {_fmt(float(best.value))}",
        "",
        *md.table(["param", "value"], ([f"`{k}`", _fmt(v)] for k, v in best.params.items())),
    ]
    retrains = tn.open_retrains(tun, opts)
    retrain = tn.retrained(retrains, "best", best.params)
    lines += ["", f"## Best configuration retrained over seeds {sorted(retrain) or '—'}", ""]
    if retrain:
        lines += md.table(["metric", "mean ± 95% CI", "per seed"])
        for key in (OBJECTIVE, *TEST_KEYS, *tun.secondary):
            vals = [float(m[key]) for m in retrain.values() if key in m]
            if vals:
                cell = md.pm(*mean_ci(vals), _fmt)
                lines.append(md.row([key, cell, ", ".join(_fmt(v) for v in vals)]))
    else:
        lines.append("Not yet: the search has not used its budget (or the time budget stopped it).")
    lines += versus_default(ostudy, params, retrain, tn.retrained(retrains, "default", {}))
    imp = importances(ostudy)
    lines += ["", "## Parameter importances (Optuna, fANOVA)", ""]
    if isinstance(imp, str):
        lines.append(f"None: {imp}.")
    else:
        lines += md.table(["param", "importance"], ([f"`{k}`", f"{v:.3f}"] for k, v in imp.items()))
    lines += [
        "",
        "## History",
        "",
        "Test figures are shown for reading only; the search selects on the objective. A failed "
        "trial shows no minutes: one whose worker died ends when a later launch notices it.",
        "",
        *md.table(
            ["trial", "state", "value", "test/ndcg@10", "test/hr@10", *tun.secondary]
            + ["last epoch", "minutes", "params"]
        ),
    ]
    lines += [history_row(tun, t) for t in trials]
    png = plot_history(ostudy, folder / f"{opts.profile}_history.png")
    best_file = folder / f"{opts.profile}_best_params.yaml"
    write_text(
        best_file, yaml.safe_dump(tn.best_overrides_yaml(params, best.params), sort_keys=False)
    )
    sets = " ".join(f"-S ++{k}={json.dumps(v)}" for k, v in best.params.items())
    lines += [
        "",
        f"![history]({png.name})",
        "",
        f"Best configuration as a params file: `{best_file.name}` "
        f"(`python bench/{tun.run[0]}.py --params {_shown(str(best_file))}`), or through DVC: "
        f"`dvc exp run {sets}`.",
        "",
    ]
    report = folder / f"report_{opts.profile}.md"
    write_text(report, "\n".join(lines))
    return [report, png, best_file]
