"""The paper's figures and trend plots (PNG, written atomically).

- Figure 1 (:func:`figure1`): training loss and validation pseudo-DSC per epoch per setting.
- Figures 2-3 (:func:`slice_figure`): axial slices every 10 mm (20, 30 ... mm when that
  would exceed 8 slices) through the organs of one case, columns input | prediction | ground truth, organ colours with a legend. Slices are
  shown in radiological convention (patient's right on the viewer's left, anterior up).
- Trend plots (:func:`trend_plot`): DSC and NSD with 95 % bootstrap CIs against the varied
  factor of a table (patch size, batch size).
- Rank plots (:func:`rank_plot`): each row's rank over the two-level bootstrap as a blob plot
  (after challengeR's): blob area = share of resamples with that rank, a cross at the median
  rank, a bar over the 95 % interval; one panel for DSC, one for NSD.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from seggrid.data.geometry import file_to_internal, load_nifti, read_array
from seggrid.io import pyplot, save_figure

MAX_SLICES = 8


def figure1(train_logs: dict[str, str | Path], out_png: str | Path) -> None:
    """Training loss and validation pseudo-DSC per epoch for each named setting."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_dsc) = plt.subplots(1, 2, figsize=(10, 4))
    for name, path in train_logs.items():
        log = pd.read_csv(path)
        ax_loss.plot(log["epoch"] + 1, log["train_loss"], marker="o", ms=3, label=name)
        ax_dsc.plot(log["epoch"] + 1, log["pseudo_dice"], marker="o", ms=3, label=name)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    ax_dsc.set(xlabel="epoch", ylabel="validation DSC (pseudo-Dice)", title="Validation DSC", ylim=(0, 1))
    for ax in (ax_loss, ax_dsc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Figure 1: training curves, fold 0")
    fig.tight_layout()
    save_figure(fig, out_png)


def _ras(path: str | Path, dtype) -> tuple[np.ndarray, tuple[float, float, float]]:
    img = load_nifti(path)
    array, spacing, _ = file_to_internal(img, read_array(img, path, dtype=dtype))
    return array, spacing


def slice_positions(reference: np.ndarray, spacing_z: float, step_mm: float = 10.0,
                    max_slices: int = MAX_SLICES) -> list[int]:
    """z indices every ``step_mm`` through the labelled region; when that gives more than
    ``max_slices`` slices, every 2, 3, ... x ``step_mm`` instead (still evenly spaced)."""
    zs = np.flatnonzero(reference.reshape(reference.shape[0], -1).any(1))
    if zs.size == 0:
        zs = np.arange(reference.shape[0])
    step = max(1, int(round(step_mm / spacing_z)))
    n = (int(zs[-1]) - int(zs[0])) // step + 1
    step *= int(np.ceil(n / max_slices))
    return list(range(int(zs[0]), int(zs[-1]) + 1, step))


def window(image: np.ndarray, modality: str) -> tuple[float, float]:
    """Display range: abdominal CT window (W 400, L 40 HU); MR 1st-99th percentile."""
    if modality == "CT":
        return -160.0, 240.0
    lo, hi = np.percentile(image, [1, 99])
    return float(lo), float(hi)


def slice_figure(image_path: str | Path, prediction_path: str | Path, reference_path: str | Path,
                 labels: dict[int, str], modality: str, title: str, out_png: str | Path,
                 step_mm: float = 10.0) -> list[int]:
    """Axial slices every ``step_mm`` mm: input | prediction | ground truth. Returns the z indices."""
    plt = pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    image, spacing = _ras(image_path, np.float32)
    pred, _ = _ras(prediction_path, np.int16)
    ref, _ = _ras(reference_path, np.int16)
    if not (image.shape == pred.shape == ref.shape):
        raise ValueError(f"{prediction_path}: shape {pred.shape} differs from image {image.shape} / "
                         f"reference {ref.shape}")
    zs = slice_positions(ref, spacing[0], step_mm)
    n_classes = max(labels) + 1
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, 20))[:max(n_classes - 1, 1)]
    cmap = ListedColormap(colours)
    lo, hi = window(image, modality)
    aspect = spacing[1] / spacing[2]
    fig, axes = plt.subplots(len(zs), 3, figsize=(9, 3 * len(zs) + 1), squeeze=False)
    for r, z in enumerate(zs):
        for c, (name, overlay) in enumerate([("input", None), ("prediction", pred[z]), ("ground truth", ref[z])]):
            ax = axes[r, c]
            ax.imshow(image[z], cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspect)
            if overlay is not None:
                shown = np.ma.masked_where(overlay == 0, overlay - 1)
                ax.imshow(shown, cmap=cmap, vmin=0, vmax=max(n_classes - 2, 1), alpha=0.6, origin="lower",
                          aspect=aspect, interpolation="nearest")
            ax.invert_xaxis()                       # radiological: patient's right on the left
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name)
            if c == 0:
                ax.set_ylabel(f"z = {z * spacing[0]:.0f} mm")
    present = sorted(set(np.unique(ref).tolist()) | set(np.unique(pred).tolist()) - {0})
    handles = [Patch(color=colours[v - 1], label=labels.get(v, str(v))) for v in present if 0 < v < n_classes]
    fig.legend(handles=handles, loc="lower center", ncol=min(5, max(1, len(handles))), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    save_figure(fig, out_png)
    return zs


def trend_plot(table: pd.DataFrame, varied: str, title: str, out_png: str | Path) -> None:
    """DSC and NSD (with 95 % CI error bars) of each row, in row order, against ``varied``."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(len(table))
    for ax, metric in zip(axes, ("dsc", "nsd")):
        mean = table[metric].to_numpy(float)
        low = table.get(f"{metric}_ci_low", pd.Series(mean)).to_numpy(float)
        high = table.get(f"{metric}_ci_high", pd.Series(mean)).to_numpy(float)
        err = np.vstack([np.clip(mean - low, 0, None), np.clip(high - mean, 0, None)])
        ax.errorbar(x, mean, yerr=np.nan_to_num(err), marker="o", capsize=4)
        ax.set_xticks(x, [str(v) for v in table["row"]], rotation=20)
        ax.set(xlabel=varied, ylabel=f"{metric.upper()} (95 % CI over cases)", title=metric.upper())
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, out_png)


def rank_plot(ranks: dict, out_png: str | Path) -> None:
    """Blob plot of a table's ``.ranks.json`` (outputs/report.py): x = row, y = rank (1 = best),
    circle area proportional to the share of bootstrap resamples giving the row that rank."""
    plt = pyplot()
    metrics = [m for m in ("dsc", "nsd") if m in ranks["frequencies"]]
    rows = ranks["rows"]
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(5 * max(1, len(metrics)), 1.2 + 0.6 * len(rows)),
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for x, row in enumerate(rows):
            freq = np.asarray(ranks["frequencies"][metric][row], dtype=float)
            share = freq / max(freq.sum(), 1)
            r = np.arange(1, len(freq) + 1)
            ax.scatter(np.full(len(r), x), r, s=900 * share, alpha=0.6, color=f"C{x % 10}", edgecolors="k",
                       linewidths=0.5)
            cum = np.cumsum(share)
            low, med, high = (int(r[np.searchsorted(cum, q)]) for q in (0.025, 0.5, 0.975))
            ax.plot([x, x], [low, high], color="k", lw=1.5)
            ax.scatter([x], [med], marker="x", color="k", s=60, zorder=3)
        ax.set_xticks(range(len(rows)), rows, rotation=20, ha="right")
        ax.set_yticks(range(1, len(rows) + 1))
        ax.set_ylim(len(rows) + 0.6, 0.4)
        ax.set(ylabel="rank (1 = best)", title=f"{metric.upper()}: rank over {ranks['resamples']} resamples")
        ax.grid(alpha=0.3)
    fig.suptitle(ranks.get("title", ""))
    fig.tight_layout()
    save_figure(fig, out_png)
