"""Figures as arrays (pure): panel grids, BraTS label colours, titled grids with a label legend, the
per-epoch training curves.

The stages write them as PNG files (DVC image plots: `dvc plots show` embeds them with no JavaScript)
and MLflow images (mrisynth.io.tracking.StageRun.log_image)."""
from __future__ import annotations

import numpy as np

# BraTS label -> (name, RGB in [0, 1]): the one definition of the label colours (maps and legends)
LABEL_COLOURS = {2: ("edema (2)", (0.1, 0.8, 0.2)), 1: ("NCR/NET (1)", (0.9, 0.1, 0.1)), 4: ("enhancing (4)", (1.0, 0.9, 0.1))}


def image_grid(rows: list[list[np.ndarray]]) -> np.ndarray:
    """uint8 RGB grid of [0, 1] panels (H, W) or (H, W, 3); rows of equal length, 2 px white gaps."""
    def rgb(panel):
        panel = np.clip(panel, 0.0, 1.0)
        return np.repeat(panel[..., None], 3, axis=-1) if panel.ndim == 2 else panel

    gap = 2
    lines = []
    for row in rows:
        panels = [rgb(p) for p in row]
        h = panels[0].shape[0]
        sep = np.ones((h, gap, 3))
        line = np.concatenate([x for p in panels for x in (p, sep)][:-1], axis=1)
        lines.append(line)
        lines.append(np.ones((gap, line.shape[1], 3)))
    return (np.concatenate(lines[:-1], axis=0) * 255).astype(np.uint8)


def label_rgb(labels: np.ndarray) -> np.ndarray:
    """BraTS labels (H, W) as colours: edema green, core red, enhancing yellow."""
    out = np.zeros((*labels.shape, 3))
    for label, (_, colour) in LABEL_COLOURS.items():
        out[labels == label] = colour
    return out


def caption_panels(grid: np.ndarray, captions: list[list[str]], panel_size: int, gap: int = 2) -> np.ndarray:
    """`grid` (from image_grid, square panels of `panel_size` px) with a caption in the bottom-left corner of
    each panel (white text on a black box; "" = none). captions[row][column], as the grid's panels."""
    from PIL import Image, ImageDraw

    out = Image.fromarray(grid)
    draw = ImageDraw.Draw(out)
    for r, row in enumerate(captions):
        for c, text in enumerate(row):
            if not text:
                continue
            x, y = c * (panel_size + gap), r * (panel_size + gap) + panel_size - 12
            text = text[: max(4, panel_size // 6)]
            draw.rectangle([x, y, x + 6 * len(text) + 3, y + 11], fill=(0, 0, 0))
            draw.text((x + 2, y), text, fill=(255, 255, 255))
    return np.asarray(out)


def titled_grid(grid: np.ndarray, titles: list[str], panel_width: int, gap: int = 2, legend: bool = True) -> np.ndarray:
    """`grid` (from image_grid) with a title band over each column and, optionally, a label legend below."""
    from PIL import Image, ImageDraw

    band = 14
    legend_h = 14 if legend else 0
    out = Image.new("RGB", (grid.shape[1], grid.shape[0] + band + legend_h), (255, 255, 255))
    out.paste(Image.fromarray(grid), (0, band))
    draw = ImageDraw.Draw(out)
    for k, title in enumerate(titles):
        draw.text((k * (panel_width + gap) + 2, 1), title[: max(4, panel_width // 6)], fill=(0, 0, 0))
    if legend:
        x, y = 2, grid.shape[0] + band + 2
        for name, colour in LABEL_COLOURS.values():
            draw.rectangle([x, y, x + 9, y + 9], fill=tuple(int(255 * c) for c in colour))
            draw.text((x + 12, y), name, fill=(0, 0, 0))
            x += 12 + 6 * len(name) + 10
    return np.asarray(out)


# train_gan's per-epoch curves: (panel title, y label, [(history key, line label), ...]); keys as in
# reports/train_gan_history.csv
CURVE_PANELS = (
    ("Generator loss (GAN + alpha * L1)", "loss", (("g_loss", "train"), ("val_g_loss", "validation"))),
    ("L1 term of the generator loss", "L1", (("g_l1", "train"), ("val_g_l1", "validation"))),
    ("Discriminator loss", "loss", (("d_loss", "train"),)),
    ("Validation MAE (inside the brain)", "MAE", (("val_mae", "validation"),)),
    ("Validation PSNR (inside the brain)", "dB", (("val_psnr", "validation"),)),
    ("Validation SSIM (inside the brain)", "SSIM", (("val_ssim", "validation"),)),
)


def training_curves(history: list[dict], title: str = "GAN training per epoch", kept_epoch: int | None = None,
                    panels=CURVE_PANELS) -> np.ndarray:
    """uint8 RGB figure of per-epoch curves: one labelled panel per entry of `panels`, x = `epoch`
    (1-based; the row's position when absent), a dashed line at `kept_epoch` (the kept checkpoint).
    Missing or non-finite values are gaps; a single epoch shows as a point. Drawn with matplotlib's
    Agg canvas (no window, no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def value(row, key):
        v = row.get(key)
        return float(v) if isinstance(v, (int, float, np.floating, np.integer)) else np.nan

    epochs = np.array([value(row, "epoch") if "epoch" in row else i + 1 for i, row in enumerate(history)], float)
    cols = 3 if len(panels) > 4 else min(2, max(1, len(panels)))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(4.0 * cols, 3.0 * rows + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    fig.suptitle(title + (f" (kept epoch: {kept_epoch})" if kept_epoch is not None else ""), fontsize=12)
    for k, (panel_title, ylabel, lines) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        drawn = False
        for key, label in lines:
            ys = np.array([value(row, key) for row in history], float)
            if np.isfinite(ys).any():
                ax.plot(epochs, ys, marker="o", markersize=3, linewidth=1.5, label=label)
                drawn = True
        if kept_epoch is not None:
            ax.axvline(kept_epoch, color="0.4", linestyle="--", linewidth=1, label="kept epoch")
        if not drawn:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes, color="0.4")
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if drawn or kept_epoch is not None:
            ax.legend(fontsize=8, loc="best")
        ax.xaxis.get_major_locator().set_params(integer=True)
        if len(epochs) and np.nanmax(epochs) == np.nanmin(epochs):  # one epoch: integer ticks around it
            ax.set_xlim(np.nanmin(epochs) - 1, np.nanmax(epochs) + 1)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
