"""Before/after bar chart of overall and per-group metrics (PNG)."""
from __future__ import annotations

from pathlib import Path


def plot_before_after(before: dict[str, float], after: dict[str, float], path: str | Path, title: str = "") -> Path:
    """Grouped horizontal bars for accuracy, per-group accuracies, worst-group accuracy and attack success."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # not pyplot: no global figure manager, no interactive backend

    keys = [k for k in before if k.startswith("accuracy") or k in ("worst_group_accuracy", "attack_success_rate",
                                                                  "balanced_accuracy", "equalized_odds_difference",
                                                                  "demographic_parity_difference")]
    y = np.arange(len(keys))
    fig = Figure(figsize=(8, 0.45 * len(keys) + 1.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.barh(y - 0.2, [before[k] for k in keys], height=0.4, label="before", color="#9aa5b1")
    ax.barh(y + 0.2, [after[k] for k in keys], height=0.4, label="after", color="#2f7ed8")
    for yi, k in zip(y, keys):
        ax.text(max(before[k], after[k]) + 0.01, yi, f"{after[k] - before[k]:+.3f}", va="center", fontsize=8)
    ax.set_yticks(y, [k.removeprefix("accuracy_") if k.startswith("accuracy_") else k for k in keys], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("value (per-group rows: accuracy)")
    ax.set_title(title or "before vs after cleaning")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path
