"""MedKLIP through the project's evaluation: predictions in `eval.py`'s record format, and attention heatmaps.

`predict_existence` turns the builder's `existence` rows (one per image and entity with a 1/0 answer) into the same
prediction records LiteGPT's existence answers have (`litegpt_eval.records`): `id` `"{dicom_id}:{entity}"`,
`task` `existence`, `text` "Yes" when P(present) >= 0.5 else "No", `scores.yes` = P(present) = sigmoid(logit),
the reference (`entity`, `label`). `litegpt_eval.scoring.score_records` then scores both models with the same code:
per-entity AUC, accuracy, validation thresholds, bootstrap intervals, baselines.

`generate_predictions` is MedKLIP's generation step for `litegpt_eval.evaluate(args, generate=...)`:
`eval.py --model <MedKLIP folder> --dataset mimic_cxr:existence ...` passes it, and so does the evaluation after
training (`medklip.training.evaluate_run`). It also writes `figures/medklip_attention_<entity>.png`:
one test image with the entity's cross-attention over the patches (mean over decoder layers), upsampled and overlaid.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from litegpt_eval.arguments import EvalArguments
    from litegpt_eval.evaluation import Generated

logger = logging.getLogger(__name__)

MODEL_TYPE = "medklip"
PREDICTIONS_NAME = "predictions.jsonl"
MANIFEST_NAME = "generation_manifest.json"


def is_medklip_checkpoint(path: str | None) -> bool:
    """True when `path` is a local folder whose `config.json` says `model_type: medklip` (a Hub MedKLIP repository is
    scored from a local copy, e.g. `huggingface_hub.snapshot_download`)."""
    if not path:
        return False
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == MODEL_TYPE
    except (OSError, json.JSONDecodeError):
        return False


def load_medklip(path: str, device: str | None = None, revision: str | None = None):
    """(model in eval mode, image processor) of a saved MedKLIP folder or Hub repo, through the Auto classes."""
    from transformers import AutoImageProcessor, AutoModel

    kwargs: dict[str, Any] = {"trust_remote_code": True}
    if revision:
        kwargs["revision"] = revision
    model = AutoModel.from_pretrained(path, **kwargs).eval()
    if device:
        model.to(device)
    return model, AutoImageProcessor.from_pretrained(path, **({"revision": revision} if revision else {}))


def _image_groups(rows: Any) -> dict[str, dict[str, Any]]:
    """dicom_id -> {"row": first row index, "answers": [(entity, label, width, height)]} of existence rows."""
    columns = [c for c in ("dicom_id", "image_id", "entity", "label", "width", "height") if c in rows.column_names]
    groups: dict[str, dict[str, Any]] = {}
    for index, row in enumerate(rows.select_columns(columns)):
        image_id = str(row.get("dicom_id") or row.get("image_id"))
        group = groups.setdefault(image_id, {"row": index, "answers": []})
        group["answers"].append((str(row["entity"]), int(row["label"]), row.get("width"), row.get("height")))
    return groups


def _image_at(rows: Any, index: int):
    column = "images" if "images" in rows.column_names else "image"
    value = rows[index][column]
    return value[0] if isinstance(value, list) else value


@torch.no_grad()
def predict_probabilities(model: Any, image_processor: Any, images: Sequence[Any]) -> np.ndarray:
    """P(present) `(len(images), entities)` of PIL images."""
    inputs = image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
    device = next(model.parameters()).device
    return torch.sigmoid(model(pixel_values=inputs["pixel_values"].to(device)).logits).float().cpu().numpy()


def predict_existence(model: Any, image_processor: Any, rows: Any, batch_size: int = 16, limit: int | None = None,
                      progress: bool = False) -> list[dict[str, Any]]:
    """Prediction records (`litegpt_eval.records` schema) for every existence row of `rows` (the first `limit` rows
    when given), see the module docstring. Rows naming an entity the model does not know raise before anything runs."""
    entities = list(model.config.entities)
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    groups = _image_groups(rows)
    unknown = sorted({e for g in groups.values() for e, *_ in g["answers"] if e not in entities})
    if unknown:
        raise ValueError(f"the rows ask about {unknown}, which the model does not predict (its entities: {entities})")
    items = list(groups.items())
    iterator: Iterable[int] = range(0, len(items), batch_size)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="medklip", unit="batch")
    records = []
    for start in iterator:
        batch = items[start : start + batch_size]
        probabilities = predict_probabilities(model, image_processor, [_image_at(rows, g["row"]) for _, g in batch])
        for (image_id, group), probs in zip(batch, probabilities):
            for entity, label, width, height in group["answers"]:
                p = float(probs[entities.index(entity)])
                reference = {"entity": entity, "label": label}
                if width and height:
                    reference.update({"width": float(width), "height": float(height)})
                records.append({"id": f"{image_id}:{entity}", "image_id": image_id, "task": "existence",
                                "text": "Yes" if p >= 0.5 else "No", "scores": {"yes": p}, "reference": reference,
                                "model": MODEL_TYPE, "schema": 1})  # fmt: skip
    return records


def write_records(records: Iterable[dict[str, Any]], path: Path) -> Path:
    from litegpt_eval.records import dumps

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


# ============================================================================================== heatmaps


@torch.no_grad()
def attention_map(model: Any, image_processor: Any, image: Any, entity: str) -> tuple[float, np.ndarray]:
    """(P(present), `(h, w)` cross-attention of `entity`'s query over the patches, mean over decoder layers)."""
    if entity not in model.config.entities:
        raise ValueError(f"unknown entity {entity!r}; the model predicts {list(model.config.entities)}")
    k = list(model.config.entities).index(entity)
    inputs = image_processor(images=[image.convert("RGB")], return_tensors="pt")
    device = next(model.parameters()).device
    output = model(pixel_values=inputs["pixel_values"].to(device), output_attentions=True)
    maps = torch.stack([a[0, k] for a in output.cross_attentions]).mean(0)
    return float(torch.sigmoid(output.logits[0, k])), maps.float().cpu().numpy()


def save_heatmap(image: Any, heatmap: np.ndarray, title: str, path: Path) -> Path:
    """The image (grey) with the heatmap upsampled to its size, overlaid; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    grey = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    scaled = (heatmap - heatmap.min()) / max(float(np.ptp(heatmap)), 1e-12)
    upsampled = np.asarray(Image.fromarray((scaled * 255).astype(np.uint8)).resize(grey.shape[::-1], Image.BILINEAR))
    figure, axis = plt.subplots(figsize=(5, 5 * grey.shape[0] / grey.shape[1]))
    axis.imshow(grey, cmap="gray")
    axis.imshow(upsampled / 255.0, cmap="jet", alpha=0.4)
    axis.set_title(title, fontsize=9)
    axis.axis("off")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def heatmap_figure(model: Any, image_processor: Any, rows: Any, out_dir: Path, entity: str | None = None) -> Path | None:
    """`figures/medklip_attention_<entity>.png` for the first image whose reference says `entity` is present
    (default: the first entity with a present answer in `rows`)."""
    groups = _image_groups(rows)
    for image_id, group in groups.items():
        present = [e for e, label, *_ in group["answers"] if label == 1 and (entity is None or e == entity)]
        if present:
            chosen = present[0]
            image = _image_at(rows, group["row"])
            probability, heatmap = attention_map(model, image_processor, image, chosen)
            title = f"{chosen}: attention over patches (mean of decoder layers)\n{image_id}, P(present) = {probability:.2f}, reference: present"
            return save_heatmap(image, heatmap, title, out_dir / "figures" / f"medklip_attention_{chosen}.png")
    logger.warning("no image with a present %s to draw an attention heatmap", entity or "entity")
    return None


# ============================================================================================== evaluation hook


def generate_predictions(args: EvalArguments, out_dir: Path) -> Generated:
    """The generation step of a MedKLIP checkpoint: predictions of `split` (and of `threshold_split`, whose file the
    thresholds come from), the heatmap figure. Refuses another task than MIMIC existence and text decoding options."""
    from litegpt_eval.evaluation import Generated, base_manifest
    from litegpt_eval.generation import load_eval_dataset
    from litegpt_eval.manifest import weight_hashes
    from litegpt_eval.records import PredictionsError

    if args.dataset and not args.dataset.startswith("mimic_cxr:existence") and ":" in args.dataset:
        raise PredictionsError(f"a MedKLIP model answers MIMIC existence only, not {args.dataset}")
    if args.paper_decoding or args.do_sample:
        raise PredictionsError("a MedKLIP model does not decode text: --paper_decoding / --do_sample do not apply")
    model, image_processor = load_medklip(args.model, device=args.device, revision=args.revision)
    manifest = {**base_manifest(args), "weights_sha256": weight_hashes(args.model)}

    def run(split: str, folder: Path, purpose: str) -> Path:
        rows, _ = load_eval_dataset(args.dataset, args.data_dir, split, args.num_proc, args.cache_dir, args.dataset_settings)
        if len(rows) == 0:
            raise PredictionsError(f"dataset {args.dataset} ({split}) has no rows")
        records = predict_existence(model, image_processor, rows, batch_size=args.batch_size, limit=args.limit,
                                    progress=not args.no_progress)  # fmt: skip
        path = write_records(records, folder / PREDICTIONS_NAME)
        digest = hashlib.sha1("\n".join(sorted(r["id"] for r in records)).encode()).hexdigest()
        (folder / MANIFEST_NAME).write_text(json.dumps({**manifest, "split": split, "items": len(records),
                                                        "items_sha1": digest, "purpose": purpose,
                                                        "decoding": {"medklip": "sigmoid(logit) >= 0.5 answers Yes"}},
                                                       indent=2))  # fmt: skip
        if split == args.split and not args.no_figures:
            heatmap_figure(model, image_processor, rows, folder)
        return path

    path = run(args.split, out_dir, "scored split")
    thresholds_from = args.thresholds_from
    if args.threshold_split:
        thresholds_from = str(run(args.threshold_split, out_dir / f"thresholds_{args.threshold_split}",
                                  "validation thresholds"))  # fmt: skip
    return Generated([path], {**manifest, "split": args.split, "model_type": MODEL_TYPE}, {}, thresholds_from)


__all__ = [
    "attention_map",
    "generate_predictions",
    "heatmap_figure",
    "is_medklip_checkpoint",
    "load_medklip",
    "predict_existence",
    "predict_probabilities",
    "save_heatmap",
    "write_records",
]
