"""The figures of an evaluation: precision-recall curves of the label confidences and of the detections, box
overlays of a seeded sample of images (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from codec_litegpt import VINDR_GLOBAL_LABELS, VINDR_LOCAL_LABELS


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_pr_figure(plt, fig, ax, drawn: int, path, title: str, legend_fontsize: int, legend_loc: str) -> str | None:
    """Label, save and close a precision-recall figure; None (nothing written) when no curve was drawn."""
    if not drawn:
        plt.close(fig)
        return None
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.legend(fontsize=legend_fontsize, loc=legend_loc)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def plot_label_pr_curves(y_true: np.ndarray, scores: np.ndarray, labels, path: str | os.PathLike, title: str) -> str | None:
    """Per-label precision-recall curves of label confidences (sklearn's `precision_recall_curve`)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    drawn = 0
    for k, label in enumerate(labels):
        if y_true[:, k].sum() == 0 or y_true[:, k].sum() == len(y_true):
            continue
        precision, recall, _ = precision_recall_curve(y_true[:, k], scores[:, k])
        ap = average_precision_score(y_true[:, k], scores[:, k])
        ax.step(recall, precision, where="post", label=f"{label} (AP {ap:.2f})")
        drawn += 1
    return _save_pr_figure(plt, fig, ax, drawn, path, title, legend_fontsize=7, legend_loc="lower left")


def plot_detection_pr_curves(detections: Mapping[str, Any], path: str | os.PathLike, title: str, max_labels: int = 12) -> str | None:
    """Detection PR curves (VOC flags) of the classes with reference boxes."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    drawn = 0
    ranked = sorted(detections.items(), key=lambda kv: -float(kv[1].gt_per_image.sum()))
    for label, det in ranked[:max_labels]:
        n_gt = float(det.gt_per_image.sum())
        if n_gt <= 0:
            continue
        order = np.argsort(-det.scores, kind="stable")
        tp = np.cumsum(det.tp[order])
        fp = np.cumsum(1 - det.tp[order])
        if not len(tp):
            recall, precision = np.array([0.0]), np.array([0.0])
        else:
            recall, precision = tp / n_gt, tp / np.maximum(tp + fp, 1e-12)
        ax.plot(recall, precision, label=f"{label} (AP {det.ap():.2f}, n={int(n_gt)})")
        drawn += 1
    return _save_pr_figure(plt, fig, ax, drawn, path, title, legend_fontsize=6, legend_loc="upper right")


def plot_box_overlay(row: Mapping[str, Any], path: str | os.PathLike, image: Any = None) -> str:
    """Predicted (red, with confidence) and reference (green) boxes on the image (grey canvas without it)."""
    plt = _plt()
    from matplotlib.patches import Rectangle

    width, height = row["ref"]["width"], row["ref"]["height"]
    fig, ax = plt.subplots(figsize=(5, 5 * height / width))
    if image is not None:
        from image_processing_litegpt import load_image

        pil = load_image(image).convert("L")
        ax.imshow(np.asarray(pil), cmap="gray", extent=(0, width, height, 0))
    else:
        ax.imshow(np.full((8, 8), 0.5), cmap="gray", vmin=0, vmax=1, extent=(0, width, height, 0))
        ax.text(width / 2, height / 2, "image not available", ha="center", va="center", color="white", fontsize=9)
    for label, box in zip(row["ref"]["box_labels"], row["ref"]["boxes"]):
        ax.add_patch(Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False, ec="lime", lw=1.5))
        ax.text(box[0], box[3], label, color="lime", fontsize=6, va="top")
    for f in row["findings"]:
        box = f["box"]
        ax.add_patch(Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False, ec="red", lw=1.2, ls="--"))
        score = "" if f.get("score") is None else f" {f['score']:.2f}"
        ax.text(box[0], box[1], f"{f['label']}{score}", color="red", fontsize=6, va="bottom")
    status = "parse failure" if row["failed"] else ("No finding" if row["no_finding"] else f"{len(row['findings'])} boxes")
    ax.set_title(f"{row['image_id']} - pred (red) vs reference (green) - {status}", fontsize=7)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def make_figures(
    extras: Mapping[str, Any], out_dir: str | os.PathLike, images: Mapping[str, Any] | None = None,
    n_overlays: int = 8, seed: int = 0,
) -> list[str]:
    """Write the figures under `out_dir/figures/`; returns their paths relative to `out_dir`."""
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for task, labels, name, kind in (("diagnosis", VINDR_GLOBAL_LABELS, "pr_global_labels.png", "Global"),
                                     ("grounding", VINDR_LOCAL_LABELS, "pr_local_labels.png", "Local")):  # fmt: skip
        task_extras = extras.get(task, {})
        if "scores" in task_extras:
            p = plot_label_pr_curves(task_extras["y_true"], task_extras["scores"], labels, fig_dir / name,
                                     f"{kind} labels: PR curves of label confidences")  # fmt: skip
            if p:
                written.append(p)
    ground = extras.get("grounding", {})
    for t, detections in ground.get("pr_detections", {}).items():
        p = plot_detection_pr_curves(detections, fig_dir / f"pr_local_detection_iou{t}.png", f"Local labels: detection PR at IoU > {t}")
        if p:
            written.append(p)
    rows = ground.get("rows", [])
    if rows and n_overlays:
        images = images or {}
        with_boxes = [r for r in rows if r["ref"]["boxes"] or r["findings"]]
        pool = sorted(with_boxes or rows, key=lambda r: r["id"])
        rng = np.random.default_rng(seed)
        chosen = [pool[k] for k in sorted(rng.choice(len(pool), size=min(n_overlays, len(pool)), replace=False))]
        overlay_dir = fig_dir / "box_overlays"
        overlay_dir.mkdir(exist_ok=True)
        for row in chosen:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in row["id"])
            written.append(plot_box_overlay(row, overlay_dir / f"{safe}.png", images.get(row["id"])))
    return [os.path.relpath(p, out_dir) for p in written]
