"""Pictures for asset pages: loss curves as markdown with an embedded PNG (Dagster renders it)."""

from __future__ import annotations

import base64
import io


def loss_curve_png(history: list[dict], noise_floor: float | None = None, title: str = "") -> bytes:
    """Train and validation loss per epoch on a log scale, the noise floor as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", ms=3, label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], marker="s", ms=3, label="validation")
    if noise_floor:
        ax.axhline(noise_floor, color="grey", ls="--", lw=1, label=f"noise floor {noise_floor:.3g}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("quality-weighted MSE")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def tradeoff_png(curves: dict[str, list[dict]], title: str = "", x: str = "new_val_loss", y: str = "old_val_loss",
                 xlabel: str = "new-task validation loss", ylabel: str = "old-task validation loss") -> bytes:
    """Consolidation trade-off: one curve per method through its lambda sweep (points labelled by lambda)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    for (label, rows), marker in zip(curves.items(), "osd^v"):
        ax.plot([r[x] for r in rows], [r[y] for r in rows], marker=marker, ms=4, label=label)
        for r in rows:
            ax.annotate(f"{r['lam']:g}", (r[x], r[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return _png(fig)


def adaptation_png(curves: dict[str, list[tuple[int, float]]], title: str = "") -> bytes:
    """Held-out traffic KL against requests seen, one line per arm (`{label: [(requests, kl)]}`)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    for (label, points), marker in zip(curves.items(), "osd^v"):
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, ms=4, label=label)
    ax.set_xlabel("requests of traffic seen")
    ax.set_ylabel("held-out traffic KL(teacher || model)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def _png(fig) -> bytes:
    from matplotlib import pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def markdown_table(rows: list[dict], columns: list[str] | None = None, floatfmt: str = ".4g") -> str:
    """A small markdown table (Dagster's metadata shows it as a table)."""
    if not rows:
        return "(empty)"
    columns = columns or list(rows[0])
    def cell(v):
        return format(v, floatfmt) if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
