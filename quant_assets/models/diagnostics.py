"""Training diagnostics of a model month as PNG charts: the learning curve (a metric per
boosting round or epoch, the kept iteration marked) and the split-gain feature importance.

Pure (matplotlib on the Agg canvas, no Dagster, no MLflow): the model assets log the charts,
and the same curves as MLflow metric steps, through the tracking resource.
"""

from __future__ import annotations

import polars as pl

from quant_assets.plots import RC, png

TOP_FEATURES = 20


def learning_curve_png(curves: dict[str, list[float]], best: int | None, title: str,
                       x_label: str = "boosting round") -> bytes:
    """Each curve against its step (1-based), losses on the left axis and rank IC on the
    right (they differ in scale by orders of magnitude); ``best`` is the step the stored
    model keeps (early stopping)."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(8.0, 3.4))
        ax = fig.add_axes((0.09, 0.15, 0.8, 0.64))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds and epochs are whole
        twin = None
        lines = []
        for name, values in sorted(curves.items()):
            steps = range(1, len(values) + 1)
            if name.endswith("rank_ic"):
                twin = twin or ax.twinx()
                lines += twin.plot(steps, values, color="C2", label=name.replace("_", " "))
            else:
                lines += ax.plot(steps, values, label=name.replace("_", " "))
        if best:
            lines.append(ax.axvline(best, color="grey", linestyle="--", label=f"kept: {best}"))
        ax.set_xlabel(x_label)
        ax.set_ylabel("loss")
        if twin is not None:
            twin.set_ylabel("rank IC")
            twin.grid(False)
        if lines:  # above the axes, between them and the title: never over the curves
            ax.legend(handles=lines, loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=8,
                      ncols=len(lines), frameon=False)
        ax.set_title(title, pad=20)
        return png(fig)


def importance_png(importance: pl.DataFrame, title: str, top: int = TOP_FEATURES) -> bytes:
    """Horizontal bars of the ``top`` features by share of total split gain (largest on top)."""
    import matplotlib
    from matplotlib.figure import Figure
    head = importance.head(top).reverse()
    with matplotlib.rc_context(RC):
        height = 1.0 + 0.22 * max(head.height, 1)
        fig = Figure(figsize=(8.0, height))
        ax = fig.add_axes((0.3, 0.5 / height, 0.65, 1.0 - 0.9 / height))
        ax.barh(head["feature"].to_list(), (head["gain_share"] * 100).to_list(), color="C0")
        ax.set_xlabel("share of split gain (%)")
        ax.set_title(title)
        return png(fig)
