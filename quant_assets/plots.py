"""PNG rendering shared by the tear sheet and the training diagnostics: matplotlib figures
drawn on the Agg canvas (no pyplot, no backend switching) with one style and byte-stable
output (no software stamp in the PNG), so equal inputs give equal bytes."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # matplotlib is imported where a chart is drawn, not at every load of the code location
    from matplotlib.figure import Figure


DPI = 80
RC = {
    "font.family": "DejaVu Sans",  # ships with matplotlib: same glyphs everywhere
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "path.simplify": False,
}
PNG_METADATA = {"Software": None}


def png(fig: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)  # attaches the Agg canvas
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata=PNG_METADATA)
    return buf.getvalue()


def equity_png(dates, curves: dict[str, object], title: str) -> bytes:
    """Growth of 1 of each named daily return series (e.g. net and gross of costs) against
    the dates, one line each, legend inside."""
    import matplotlib
    import numpy as np
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(8.0, 3.0))
        ax = fig.add_axes((0.09, 0.14, 0.88, 0.76))
        for name, returns in curves.items():
            ax.plot(dates, np.cumprod(1.0 + np.nan_to_num(np.asarray(returns, dtype=float))), label=name)
        if len(dates) > 1:
            locator = AutoDateLocator(maxticks=8)
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        ax.set_ylabel("growth of 1")
        ax.legend(loc="upper left", fontsize=8)
        ax.set_title(title)
        return png(fig)


def markdown_image(png_bytes: bytes, alt: str) -> str:
    """A PNG as a Markdown image with a base64 data URI: how a plot travels in Dagster's
    Markdown metadata (``MetadataValue.md``), which the UI renders as an image with no file
    or server behind it. Keep it small: it is stored in the event log with each run."""
    import base64

    if not png_bytes.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError(f"{alt}: not a PNG")
    data = base64.b64encode(png_bytes).decode("ascii")
    return f"![{alt}](data:image/png;base64,{data})"
