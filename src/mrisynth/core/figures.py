"""Figures as arrays (pure): panel grids, BraTS label colours, titled grids with a label legend.

The stages write them as PNG files and MLflow images (mrisynth.io.tracking.StageRun.log_image)."""
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
