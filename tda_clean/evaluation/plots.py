"""Before/after bar chart of overall and per-group metrics (PNG), coloured by whether each metric got better."""
from __future__ import annotations

from pathlib import Path

from tda_clean.evaluation.directions import direction, improvement

#: after-bar colours: improved, regressed, unchanged or no direction
BETTER, WORSE, NEUTRAL, BEFORE = "#2e9d4f", "#d1495b", "#2f7ed8", "#9aa5b1"
_PLOTTED = ("worst_group_accuracy", "attack_success_rate", "balanced_accuracy", "equalized_odds_difference",
            "demographic_parity_difference")


def plotted(before: dict[str, float]) -> list[str]:
    """The metrics on the chart, in report order."""
    return [k for k in before if k.startswith("accuracy") or k in _PLOTTED]


def after_colour(metric: str, before: float, after: float) -> str:
    """:data:`BETTER` / :data:`WORSE` by the metric's direction; :data:`NEUTRAL` when unchanged or undirected."""
    gain = improvement(metric, before, after)
    return NEUTRAL if not gain else BETTER if gain > 0 else WORSE


def plot_before_after(before: dict[str, float], after: dict[str, float], path: str | Path, title: str = "") -> Path:
    """Grouped horizontal bars for accuracy, per-group accuracies, worst-group accuracy, fairness gaps and attack
    success. Each label says which way is better (``↑`` higher, ``↓`` lower, from
    :mod:`tda_clean.evaluation.directions`); the after-bar and its change are green when the metric improved,
    red when it regressed, blue when unchanged."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # not pyplot: no global figure manager, no interactive backend
    from matplotlib.patches import Patch

    keys = plotted(before)
    y = np.arange(len(keys))
    colours, labels = [], []
    for k in keys:
        colours.append(after_colour(k, before[k], after[k]))
        name = k.removeprefix("accuracy_") if k.startswith("accuracy_") else k
        labels.append(f"{name} {'↑' if direction(k) == 'higher' else '↓' if direction(k) == 'lower' else ''}")
    fig = Figure(figsize=(8.5, 0.45 * len(keys) + 1.6))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.barh(y - 0.2, [before[k] for k in keys], height=0.4, color=BEFORE)
    ax.barh(y + 0.2, [after[k] for k in keys], height=0.4, color=colours)
    for yi, k, colour in zip(y, keys, colours):
        verdict = {BETTER: " better", WORSE: " worse"}.get(colour, "")
        ax.text(np.nanmax([before[k], after[k], 0.0]) + 0.01, yi, f"{after[k] - before[k]:+.3f}{verdict}",
                va="center", fontsize=8, color=colour if colour != NEUTRAL else "black")
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.2)
    ax.set_xlabel("value (per-group rows: accuracy) — ↑ higher is better, ↓ lower is better")
    ax.set_title(title or "before vs after cleaning", fontsize=10)
    ax.legend(handles=[Patch(color=BEFORE, label="before"), Patch(color=BETTER, label="after: better"),
                       Patch(color=WORSE, label="after: worse"), Patch(color=NEUTRAL, label="after: same")],
              loc="lower right", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def plot_budget_curve(curve: dict, path: str | Path, title: str = "") -> Path:
    """The automatic budget's evidence (``report.json`` ``selection.auto_budget``, a
    :class:`~tda_clean.selection.budget_curve.BudgetCurve` as a dict): predicted, validated (selection part) and
    held-out changes of the objective against the budget k (left axis, negative = better), the accuracy of both
    parts (right axis), and the chosen k (dashed line)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = np.asarray(curve["k"], dtype=float)
    predicted = np.array([np.nan if v is None else v for v in curve["predicted"]], dtype=float)
    fig = Figure(figsize=(7.5, 5.0))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if np.isfinite(predicted[1:]).any():
        ax.plot(k, predicted, "o:", color=BEFORE, label="predicted (selection part)")
    ax.plot(k, curve["validated"], "o-", color=NEUTRAL, label="validated (selection part)")
    ax.plot(k, curve["held_out"], "s-", color=BETTER, label="held-out part")
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.axvline(curve["chosen"], color=WORSE, linestyle="--", label=f"chosen k = {curve['chosen']}")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel(f"budget k (training rows, action: {curve.get('action', 'remove')})")
    ax.set_ylabel(f"change of {curve.get('objective', 'objective')} (↓ better)")
    acc = ax.twinx()
    acc.plot(k, curve["accuracy"], "^--", color="#8e6bbf", alpha=0.7, label="accuracy (selection)")
    acc.plot(k, curve["accuracy_held_out"], "v--", color="#c08a2e", alpha=0.7, label="accuracy (held out)")
    acc.set_ylabel("accuracy (↑ better)")
    lines = ax.get_legend_handles_labels()
    more = acc.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16),
              ncol=3)
    reason = curve.get("reason", "")
    ax.set_title(f"{title or 'automatic budget'}\n{reason[:110]}{'…' if len(reason) > 110 else ''}", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path
