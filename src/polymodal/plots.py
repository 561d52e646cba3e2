"""PNG plots for reports (evaluation, experiments), drawn with matplotlib off screen.

Figures are returned as PNG bytes so that callers write them atomically beside their JSON; the same
numbers give the same bytes (no dates in the metadata).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np

Interval = tuple[float, float, float]  # value, low, high


def _pyplot():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig) -> bytes:  # noqa: ANN001 (a matplotlib Figure)
    """The figure as PNG bytes (closed afterwards)."""
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def grouped_bars(
    groups: Sequence[str],
    series: Mapping[str, Sequence[Interval]],
    *,
    ylabel: str,
    title: str = "",
    chance: float | Sequence[float] | None = None,
    markers: Mapping[str, Sequence[float]] | None = None,
    marker_label: str = "",
) -> bytes:
    """Bars for each group and series with their 95% intervals as error bars. ``chance``: one level for
    all groups (a dotted line) or one per group (a dotted tick over each); ``markers``: a value per
    group for some series, drawn as a black tick over its bar (e.g. the same questions without media)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) * max(1, len(series)) ** 0.5 + 2), 3.6))
    width = 0.8 / max(1, len(series))
    x0 = np.arange(len(groups))
    for i, (name, values) in enumerate(series.items()):
        x = x0 + (i - (len(series) - 1) / 2) * width
        v = np.array([t[0] for t in values])
        errors = np.array([[t[0] - t[1] for t in values], [t[2] - t[0] for t in values]]).clip(min=0)
        ax.bar(x, v, width, yerr=errors, capsize=3, label=name)
        if markers and name in markers:
            ax.scatter(x, markers[name], marker="_", s=200, color="black", zorder=3,
                       label=marker_label if i == 0 else None)  # fmt: skip
    if isinstance(chance, (int, float)):
        ax.axhline(chance, color="grey", linestyle=":", linewidth=1, label="chance")
    elif chance is not None:
        ax.hlines(chance, x0 - 0.45, x0 + 0.45, colors="grey", linestyles=":", linewidth=1.5, label="chance")
    long = max(map(len, groups), default=0) > 10
    ax.set_xticks(x0, groups, **({"rotation": 30, "ha": "right"} if long else {}))
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8, ncol=4, loc="upper left")
    return png(fig)


def curves(panels: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]], *, xlabel: str, ylabel: str) -> bytes:
    """One panel per key, one line per inner key, through (x, y) points."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3), squeeze=False, sharey=True)
    for ax, (title, lines) in zip(axes[0], panels.items(), strict=True):
        for name, points in lines.items():
            xy = np.array(points, dtype=float).reshape(-1, 2)
            ax.plot(xy[:, 0], xy[:, 1], label=name, linewidth=1)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(ylabel)
    return png(fig)
