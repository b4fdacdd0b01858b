"""Batched generation that writes `predictions.jsonl` as it goes (docs/design.md, "Metrics").

* Input: a `datasets.Dataset` (or any sequence of dict rows) with `image_id`, `images` (list of images; `image` also
  accepted), `width`/`height` (original size, the pixel space of the boxes) and references: the VinDr builder's
  `grounding`/`diagnosis` rows (`local_labels`, `global_labels`, `no_finding`, `box_labels`, `boxes`, TRL `prompt`/
  `completion`), MIMIC `existence` rows (`entity`, `label`) and `report` rows (`completion`). `rows_to_items`
  adapts them; missing optional columns are tolerated, the task comes from the argument or the prompt.
* Decoding: greedy (`do_sample=False`) unless sampling is asked for, then recorded in every record and the
  manifest; left padding; `max_new_tokens` 512 (grounding, report) / 64 (diagnosis) / 8 (existence) by default.
* Confidences: transition scores of the generated tokens (`compute_transition_scores(normalize_logits=True)`) ->
  box scores (`exp(mean log-prob)` of each phrase, the rule of `LiteGPTProcessor.post_process_grounding`), the
  `No finding` phrase score, and, when enabled, teacher-forced label-slot probabilities (stage 1: the 22 local
  labels as `<p>label</p>`; stage 2: the 6 global labels) and P(Yes) (existence) for AUC.
* Resume: records are appended and flushed one by one; a rerun skips the `(task, id)` pairs already written (an
  interrupted last line is cut off first). The run settings are kept in `generation_manifest.json`; resuming with
  different decoding settings raises.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from codec_litegpt import (
    DIAGNOSIS_INSTRUCTION,
    GROUNDING_INSTRUCTION,
    REPORT_INSTRUCTION,
    VINDR_GLOBAL_LABELS,
    VINDR_LOCAL_LABELS,
    messages_text,
    parse_diagnosis_answer,
    parse_grounding_answer,
    parse_yes_no,
)

from .confidence import (
    image_conditioning,
    label_slot_probabilities,
    no_finding_confidence,
    span_confidence,
    token_char_spans,
    truncate_at_eos,
    yes_probability,
)
from .records import RECORD_SCHEMA, PredictionsError, PredictionWriter, done_keys

DEFAULT_MAX_NEW_TOKENS = {"grounding": 512, "diagnosis": 64, "existence": 8, "report": 512}
# The released code's sampling, for --paper_decoding: stage 1 T 0.6, stage 2 T 0.1, top-p 0.9.
PAPER_SAMPLING = {"grounding": {"temperature": 0.6, "top_p": 0.9}, "diagnosis": {"temperature": 0.1, "top_p": 0.9}}
MANIFEST_NAME = "generation_manifest.json"


# ======================================================================================= dataset adapter


@dataclass
class EvalItem:
    """One generation request: an image, its prompt and the reference to store with the prediction."""

    id: str
    image_id: str
    task: str
    image: Any
    width: float
    height: float
    prompt: list[dict[str, Any]] | None = None
    entity: str | None = None
    reference: dict[str, Any] = field(default_factory=dict)


def infer_task(row: dict[str, Any]) -> str:
    """Task of a row from its prompt text (the stage instructions of the codec)."""
    text = messages_text(row.get("prompt"))
    if GROUNDING_INSTRUCTION in text or "[identify]" in text or "[grounding]" in text:
        return "grounding"
    if DIAGNOSIS_INSTRUCTION in text:
        return "diagnosis"
    if REPORT_INSTRUCTION in text or "[caption]" in text:
        return "report"
    if "Answer yes or no" in text or ("entity" in row and "label" in row):
        return "existence"
    raise ValueError(f"cannot infer the task of row {row.get('image_id')!r} from its prompt {text[:120]!r}; pass task=")


def _first_image(row: dict[str, Any]) -> Any:
    images = row.get("images")
    if images is not None:
        if isinstance(images, (list, tuple)):
            if not images:
                raise ValueError(f"row {row.get('image_id')!r} has an empty `images` list")
            return images[0]
        return images
    if row.get("image") is not None:
        return row["image"]
    raise ValueError(f"row {row.get('image_id')!r} has no `images`/`image` column")


def _image_size(image: Any) -> tuple[float, float] | None:
    size = getattr(image, "size", None)
    if isinstance(size, tuple) and len(size) == 2:
        return float(size[0]), float(size[1])
    return None


def row_to_item(row: dict[str, Any], task: str | None = None) -> EvalItem:
    """Adapt one dataset row (VinDr/MIMIC builder layout, or a hand-made dict) to an `EvalItem`."""
    task = task or infer_task(row)
    image_id = str(row.get("image_id") or row.get("dicom_id") or row.get("id") or "")
    if not image_id:
        raise ValueError(f"row without `image_id` (keys {sorted(row)})")
    image = _first_image(row)
    width, height = row.get("width"), row.get("height")
    if not width or not height:
        size = _image_size(image)
        if size is None:
            raise ValueError(f"row {image_id!r}: no width/height and the image size is unknown")
        width, height = size
    reference_text = messages_text(row.get("completion")) if row.get("completion") is not None else row.get("answer")
    reference: dict[str, Any] = {"width": float(width), "height": float(height)}
    if reference_text is not None:
        reference["text"] = reference_text
    for key in ("local_labels", "global_labels", "no_finding", "box_labels", "boxes", "grid_boxes"):
        if row.get(key) is not None:
            reference[key] = list(row[key]) if isinstance(row[key], (list, tuple)) else row[key]
    entity = row.get("entity")
    item_id = image_id
    if task == "existence":
        if entity is None or row.get("label") is None:
            raise ValueError(f"existence row {image_id!r} needs `entity` and `label`")
        reference.update({"entity": str(entity), "label": int(row["label"])})
        item_id = f"{image_id}:{entity}"
    return EvalItem(
        id=item_id, image_id=image_id, task=task, image=image, width=float(width), height=float(height),
        prompt=row.get("prompt"), entity=entity, reference=reference,
    )  # fmt: skip


def rows_to_items(rows: Iterable[dict[str, Any]], task: str | None = None, limit: int | None = None) -> list[EvalItem]:
    """All rows as items; duplicated (task, id) raise (the predictions file is keyed by them)."""
    items, seen = [], set()
    for k, row in enumerate(rows):
        if limit is not None and k >= limit:
            break
        item = row_to_item(dict(row), task)
        key = (item.task, item.id)
        if key in seen:
            raise ValueError(f"duplicated item id {item.id!r} for task {item.task!r} in the dataset")
        seen.add(key)
        items.append(item)
    return items


def load_eval_dataset(
    spec: str,
    data_dir: str | None = None,
    split: str = "test",
    num_proc: int | None = None,
    cache_dir: str | None = None,
    settings: dict[str, Any] | None = None,
):
    """A dataset from `builder:config` (`vindr_cxr:grounding`, `vindr_cxr:diagnosis`, `mimic_cxr:existence`,
    `mimic_cxr:report`, built with the project's builders from `data_dir` with builder `settings` (those training
    used, e.g. `{"dedup": "mean"}`), in `cache_dir` when given), a
    `save_to_disk` folder (its `split`), or Parquet / JSON Lines files (the whole file: `split` is ignored).
    Returns `(dataset, task or None)`."""
    if ":" in spec and not os.path.exists(spec):
        name, config = spec.split(":", 1)
        module_name, class_name = {"vindr_cxr": ("vindr_cxr", "VinDrCXR"), "mimic_cxr": ("mimic_cxr", "MIMICCXR")}.get(
            name, (None, None)
        )
        if module_name is None:
            raise ValueError(f"unknown dataset {name!r}; expected vindr_cxr:<config> or mimic_cxr:<config>")
        try:
            module = __import__(f"datasets_scripts.{module_name}", fromlist=[class_name])
            builder_cls = getattr(module, class_name)
        except (ImportError, AttributeError) as err:
            raise RuntimeError(f"the {name} builder (datasets_scripts/{module_name}.py) is not available: {err}") from err
        if data_dir is None:
            raise ValueError(f"--data_dir is required to build {spec}")
        kwargs = {"cache_dir": cache_dir} if cache_dir else {}
        try:
            builder = builder_cls(config_name=config, data_dir=data_dir, **kwargs, **(settings or {}))
        except TypeError as err:  # an unknown setting name
            raise ValueError(f"{name} builder settings {sorted(settings or {})}: {err}") from None
        builder.download_and_prepare(num_proc=num_proc) if num_proc else builder.download_and_prepare()
        task = {"grounding": "grounding", "diagnosis": "diagnosis", "existence": "existence", "report": "report"}.get(config)
        return builder.as_dataset(split=split), task
    import datasets

    path = Path(spec)
    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        return (loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded), None
    if path.suffix in (".parquet", ".jsonl", ".json"):
        kind = "parquet" if path.suffix == ".parquet" else "json"
        return datasets.load_dataset(kind, data_files=str(path), split="train"), None
    raise ValueError(f"cannot load a dataset from {spec!r}")


# ======================================================================================= generation


def load_model_and_processor(path: str, dtype: str = "auto", device: str | None = None, revision: str | None = None):
    """`AutoModelForImageTextToText` + `AutoProcessor` with `trust_remote_code=True`, in eval mode, left padding."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    kwargs: dict[str, Any] = {"trust_remote_code": True}
    if revision:
        kwargs["revision"] = revision
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch_dtype, **kwargs).eval()
    if device:
        model.to(device)
    processor = AutoProcessor.from_pretrained(path, **kwargs)
    processor.tokenizer.padding_side = "left"
    return model, processor


@dataclass
class DecodingSettings:
    do_sample: bool = False
    max_new_tokens: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MAX_NEW_TOKENS))
    temperature: float | dict[str, float] | None = None  # one value or one per task
    top_p: float | dict[str, float] | None = None
    seed: int | None = None

    def for_task(self, task: str) -> dict[str, Any]:
        out: dict[str, Any] = {"do_sample": self.do_sample, "max_new_tokens": int(self.max_new_tokens[task])}
        if self.do_sample:
            out["temperature"] = self.temperature.get(task, 1.0) if isinstance(self.temperature, dict) else self.temperature
            out["top_p"] = self.top_p.get(task, 1.0) if isinstance(self.top_p, dict) else self.top_p
            out["seed"] = self.seed
        return out

    @classmethod
    def paper(cls, seed: int, max_new_tokens: dict[str, int] | None = None) -> DecodingSettings:
        """[C]'s sampling (stage 1 T 0.6, stage 2 T 0.1, top-p 0.9), for `--paper_decoding`."""
        return cls(
            do_sample=True,
            max_new_tokens=dict(max_new_tokens or DEFAULT_MAX_NEW_TOKENS),
            temperature={task: v["temperature"] for task, v in PAPER_SAMPLING.items()},
            top_p={task: v["top_p"] for task, v in PAPER_SAMPLING.items()},
            seed=seed,
        )

    def to_json(self) -> dict[str, Any]:
        return {"do_sample": self.do_sample, "max_new_tokens": dict(self.max_new_tokens), "temperature": self.temperature,
                "top_p": self.top_p, "seed": self.seed}  # fmt: skip


def _prompt_text(processor, item: EvalItem) -> str:
    if item.prompt:
        return processor.apply_chat_template(item.prompt, add_generation_prompt=True, tokenize=False)
    return processor.task_prompt(item.task, entity=item.entity)


def _eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return {int(i) for i in ids}


def _batches(items: Sequence[EvalItem], batch_size: int) -> Iterator[list[EvalItem]]:
    """Consecutive items of the same task, `batch_size` at a time."""
    batch: list[EvalItem] = []
    for item in items:
        if batch and (len(batch) == batch_size or batch[0].task != item.task):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def generate_batch(
    model,
    processor,
    items: Sequence[EvalItem],
    decoding: DecodingSettings,
    label_scores: bool = True,
    keep_tokens: bool = True,
) -> list[dict[str, Any]]:
    """Generate answers for items of one task and return their prediction records."""
    import torch

    task = items[0].task
    if any(item.task != task for item in items):
        raise ValueError("a batch must hold one task")
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    settings = decoding.for_task(task)
    inputs = processor(
        images=[[item.image] for item in items], text=[_prompt_text(processor, item) for item in items],
        padding=True, return_tensors="pt",
    )  # fmt: skip
    device = next(model.parameters()).device
    inputs = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in inputs.items()}
    gen_kwargs: dict[str, Any] = {
        "do_sample": settings["do_sample"], "max_new_tokens": settings["max_new_tokens"],
        "output_scores": True, "return_dict_in_generate": True,
    }  # fmt: skip
    if settings["do_sample"]:
        gen_kwargs.update(temperature=settings["temperature"], top_p=settings["top_p"])
        seed = (settings["seed"] or 0) * 1_000_003 + zlib.crc32(items[0].id.encode())
        torch.manual_seed(seed % (2**63))
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        out = model.generate(**inputs, **gen_kwargs)
        transition = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    prompt_len = inputs["input_ids"].shape[1]
    new_tokens = out.sequences[:, prompt_len:].cpu().numpy()
    logprobs = transition.float().cpu().numpy()
    eos = _eos_ids(model, tokenizer)
    records = []
    for b, item in enumerate(items):
        ids, lps, finished = truncate_at_eos(new_tokens[b].tolist(), logprobs[b].tolist(), eos)
        text, spans = token_char_spans(tokenizer, ids)
        record: dict[str, Any] = {
            "schema": RECORD_SCHEMA, "id": item.id, "image_id": item.image_id, "task": task, "text": text,
            "truncated": not finished, "decoding": settings, "reference": item.reference, "scores": {},
        }  # fmt: skip
        if task == "grounding":
            record["parsed"] = _grounding_parse(processor, ids, lps, text, spans, item)
            record["scores"]["no_finding"] = no_finding_confidence(text, spans, lps)
        elif task == "diagnosis":
            parsed = parse_diagnosis_answer(text)
            record["parsed"] = {
                "positive": parsed.positive, "negative": parsed.negative, "no_finding": parsed.no_finding,
                "none_listed": parsed.none_listed, "contradiction": parsed.contradiction, "failures": parsed.failures,
            }  # fmt: skip
        elif task == "existence":
            answer = parse_yes_no(text)
            record["parsed"] = {"answer": answer, "failures": [] if answer is not None else [f"not a yes/no answer: {text!r}"]}
        else:
            record["parsed"] = {}
        if label_scores and task in ("grounding", "diagnosis", "existence"):
            mask = inputs["attention_mask"][b].bool()
            prompt_ids = inputs["input_ids"][b][mask].tolist()
            conditioning = image_conditioning(model, inputs["pixel_values"][b : b + 1])
            if task in ("grounding", "diagnosis"):
                labels = VINDR_LOCAL_LABELS if task == "grounding" else VINDR_GLOBAL_LABELS
                record["scores"]["labels"] = label_slot_probabilities(
                    model, tokenizer, prompt_ids, conditioning, text, labels, task=task
                )
            else:
                record["scores"]["yes"] = yes_probability(model, tokenizer, prompt_ids, conditioning, text)
        if keep_tokens:
            record["tokens"] = {"ids": ids, "logprobs": [round(float(v), 6) for v in lps]}
        records.append(record)
    return records


def _grounding_parse(processor, ids, logprobs, text, spans, item: EvalItem) -> dict[str, Any]:
    """`post_process_grounding`'s result for one answer, reusing the token spans already decoded for it.

    Same parser and the same phrase score (`exp(mean log-prob)` of the tokens overlapping the phrase); answers that
    contain `[/INST]` (the processor then parses only what follows) go through the processor itself.
    """
    keys = ("findings", "no_finding", "none_listed", "contradiction", "failures")
    if "[/INST]" in text:
        post = processor.post_process_grounding([ids], image_size=(item.width, item.height), scores=np.array([logprobs]))[0]
        return {k: post[k] for k in keys}
    parsed = parse_grounding_answer(text, item.width, item.height)
    findings = [
        {"label": f.label, "box": f.box, "grid_box": f.grid_box, "score": span_confidence(f.span, spans, logprobs)}
        for f in parsed.findings
    ]
    return {"findings": findings, "no_finding": parsed.no_finding, "none_listed": parsed.none_listed,
            "contradiction": parsed.contradiction, "failures": list(parsed.failures)}  # fmt: skip


def _read_manifest(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    return json.loads(path.read_text())


def run_generation(
    model,
    processor,
    items: Sequence[EvalItem],
    out_dir: str | os.PathLike,
    decoding: DecodingSettings | None = None,
    batch_size: int = 8,
    label_scores: bool = True,
    keep_tokens: bool = True,
    resume: bool = True,
    progress: bool = True,
    predictions_name: str = "predictions.jsonl",
    manifest: dict[str, Any] | None = None,
    on_batch=None,
) -> dict[str, Any]:
    """Generate every item not already in `out_dir/predictions_name`, appending records as they are produced.

    Returns `{"path", "written", "skipped_done", "total"}`. `on_batch(records)` is called after each batch.
    """
    decoding = decoding or DecodingSettings()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / predictions_name
    manifest_path = out_dir / (MANIFEST_NAME if predictions_name == "predictions.jsonl" else f"{Path(predictions_name).stem}.manifest.json")
    if not resume and path.exists():
        raise PredictionsError(f"{path} exists; pass resume=True (default) to continue it or remove it")
    previous = _read_manifest(manifest_path)
    if previous is not None and path.exists() and previous.get("decoding") != decoding.to_json():
        raise PredictionsError(
            f"{path} was generated with decoding {previous.get('decoding')}, not {decoding.to_json()}: "
            "use another --out folder or delete the file"
        )
    manifest_path.write_text(json.dumps({**(manifest or {}), "decoding": decoding.to_json(), "batch_size": batch_size,
                                         "label_scores": label_scores}, indent=2, default=str))  # fmt: skip
    done = done_keys(path)
    todo = [item for item in items if (item.task, item.id) not in done]
    written = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="generating", unit="image")
    with PredictionWriter(path) as writer:
        for batch in _batches(todo, batch_size):
            records = generate_batch(model, processor, batch, decoding, label_scores=label_scores, keep_tokens=keep_tokens)
            for record in records:
                writer.write(record)
            written += len(records)
            if bar is not None:
                bar.update(len(records))
            if on_batch is not None:
                on_batch(records)
    if bar is not None:
        bar.close()
    return {"path": str(path), "written": written, "skipped_done": len(items) - len(todo), "total": len(items)}


__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "PAPER_SAMPLING",
    "DecodingSettings",
    "EvalItem",
    "generate_batch",
    "infer_task",
    "load_eval_dataset",
    "load_model_and_processor",
    "row_to_item",
    "rows_to_items",
    "run_generation",
]
