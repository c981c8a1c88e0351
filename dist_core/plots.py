"""Small PNG helpers (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves(path: Path, title: str, x: Sequence[float], panels: list[dict], markers: bool = False) -> Path:
    """One row of panels; each panel: {"ylabel", "series": [(label, ys) or (label, xs, ys)], "hlines": [(label, y)]}
    and optionally "xlabel", "xscale"/"yscale" ("linear" or "log")."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for series in panel.get("series", []):
            label, xs, ys = series if len(series) == 3 else (series[0], x, series[1])
            ax.plot(xs, ys, label=label, marker="o" if markers else None)
        for label, y in panel.get("hlines", []):
            ax.axhline(y, linestyle="--", color="gray", label=label)
        ax.set_xlabel(panel.get("xlabel", "round"))
        ax.set_ylabel(panel["ylabel"])
        ax.set_xscale(panel.get("xscale", "linear"))  # "log" for quantities over decades
        ax.set_yscale(panel.get("yscale", "linear"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
