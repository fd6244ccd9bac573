"""Learning-curve plots of RL runs (needs matplotlib: the ``plot`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_returns(curves: dict[str, list[dict[str, Any]]], path: Path, *, title: str = "") -> None:
    """Mean episodic return against frames, one line per run (needs matplotlib)."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..utils.io import atomic_save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, hist in curves.items():
        pts = [(h["frames"], h["mean_return"]) for h in hist if h.get("mean_return") is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), label=label)
    ax.set_xlabel("frames")
    ax.set_ylabel("mean episodic return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    atomic_save_figure(fig, path, bbox_inches="tight")
    plt.close(fig)
