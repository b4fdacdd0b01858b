"""LiteGPT-CXR web demo: upload a chest X-ray (DICOM, PNG or JPEG), see the findings boxed and scored.

    python app.py --model runs/demo/grounding          # a stage folder (LoRA adapter; its base is resolved)
    python app.py --model runs/demo/base               # a base folder
    python app.py --model org/litegpt-7b-grounding     # a Hub id
    LITEGPT_MODEL=org/name python app.py               # how a Hugging Face Space passes the model

The page serves on 127.0.0.1 (or `GRADIO_SERVER_NAME`, which Spaces set to 0.0.0.0). The same file is a Space's
`app.py` unchanged: `python app.py --write_space DIR` writes a Space's files (README, "Web demo").

What runs where: the upload is decoded by the processor's `load_image` (DICOM with the chosen windowing, the same
8-bit image the model is given and the boxes are drawn on); the answer comes from `litegpt_eval.generation
.generate_batch`, the greedy generation `eval.py` scores, with the same parse and the same per-box confidence
(`exp(mean log-prob)` of each phrase's tokens) as `LiteGPTProcessor.post_process_grounding`, and for the diagnosis
task the teacher-forced probability of each global label (the label AUC scores of `eval.py`).

Concurrency: Gradio's queue runs at most `--concurrency` requests at once (default 1) and holds at most
`--max_queue` waiting ones (default 20; beyond that a user is told the queue is full). The model itself runs one
request at a time behind a lock: a fast tokenizer must not be called from two threads at once, and two requests
share one model. Each request's values live in its own call; nothing is kept between requests.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from codec_litegpt import NO_FINDING, VINDR_GLOBAL_LABELS, VINDR_LOCAL_LABELS
from image_processing_litegpt import WINDOWING_MODES, is_dicom_file, load_image

logger = logging.getLogger("litegpt_app")

TASKS = {"grounding": "Grounded findings (boxes)", "diagnosis": "Diagnosis (global labels)"}
WINDOWING_CHOICES = {
    "window": "Stored window (WindowCenter / WindowWidth)",
    "voi_lut": "VOI LUT",
    "minmax": "Full range (min-max)",
}
UPLOAD_TYPES = [".dcm", ".dicom", ".png", ".jpg", ".jpeg"]
FINDING_COLUMNS = ["finding", "x1", "y1", "x2", "y2", "score"]
DIAGNOSIS_COLUMNS = ["label", "answer", "score"]
DEFAULT_EXAMPLES_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "litegpt-cxr" / "app-examples"
# One colour per VinDr local label (by canonical index), so that a label keeps its colour across images.
PALETTE = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
           "#fabed4", "#469990", "#dcbeff", "#9a6324", "#fffac8", "#800000", "#aaffc3", "#808000", "#ffd8b1",
           "#000075", "#a9a9a9", "#ff4500", "#00ced1")  # fmt: skip
# Repository packages a Hugging Face Space imports besides the processor's code (see `space_files`).
SPACE_PACKAGES = ("litegpt_eval", "datasets_scripts")
DISCLAIMER = "Research demo, not a medical device: do not use it for diagnosis or treatment decisions."


# ======================================================================================= model


class LiteGPTDemo:
    """A loaded LiteGPT model and processor, answering one image at a time (see the module docstring)."""

    def __init__(self, model, processor, name: str, max_new_tokens: int | None = None):
        from litegpt_eval.generation import DEFAULT_MAX_NEW_TOKENS, DecodingSettings

        budget = dict(DEFAULT_MAX_NEW_TOKENS)
        if max_new_tokens:
            budget = dict.fromkeys(budget, int(max_new_tokens))
        self.model = model
        self.processor = processor
        self.name = name
        self.decoding = DecodingSettings(do_sample=False, max_new_tokens=budget)
        self._lock = threading.Lock()

    def busy(self) -> bool:
        """True while another request is on the model (this one will wait for it)."""
        return self._lock.locked()

    @classmethod
    def load(cls, model: str, dtype: str = "auto", device: str | None = None, revision: str | None = None,
             max_new_tokens: int | None = None) -> LiteGPTDemo:  # fmt: skip
        """Load a base folder, a stage (adapter) folder or a Hub id with `eval.py`'s loader.

        An adapter folder loads through transformers' PEFT integration, which loads the base named by its
        `adapter_config.json` (`base_model_name_or_path`) first; the processor comes from the folder itself
        (stage folders and uploaded stages carry it).
        """
        from litegpt_eval.generation import load_model_and_processor

        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else None
        loaded, processor = load_model_and_processor(model, dtype=dtype, device=device, revision=revision)
        return cls(loaded, processor, name=model, max_new_tokens=max_new_tokens)

    def answer(self, image: Image.Image, task: str) -> dict[str, Any]:
        """Greedy answer of the model for one loaded image: the prediction record of `eval.py` (text, parse, scores)."""
        from litegpt_eval.generation import EvalItem, generate_batch

        if task not in TASKS:
            raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
        width, height = image.size
        item = EvalItem(id="upload", image_id="upload", task=task, image=image, width=float(width),
                        height=float(height), reference={"width": float(width), "height": float(height)})  # fmt: skip
        with self._lock:
            # Label scores only for the diagnosis task, whose answer they score; a grounding answer is scored per
            # box by its phrase, and its 22 teacher-forced label slots would be extra LM passes nobody reads here.
            return generate_batch(self.model, self.processor, [item], self.decoding,
                                  label_scores=task == "diagnosis", keep_tokens=False)[0]  # fmt: skip


# ======================================================================================= one request


class UploadError(ValueError):
    """An upload that is not a readable chest X-ray; the message is the processor's, naming the uploaded file."""


def read_upload(path: str | os.PathLike | None, windowing: str) -> Image.Image:
    """The uploaded file as the RGB image the model sees (DICOM through `windowing`), or `UploadError`."""
    if path is None:
        raise UploadError("Upload a chest X-ray first (DICOM .dcm/.dicom, PNG or JPEG).")
    if windowing not in WINDOWING_MODES:
        raise UploadError(f"windowing must be one of {list(WINDOWING_MODES)}, got {windowing!r}")
    path = os.fspath(path)
    name = Path(path).name
    try:
        return load_image(path, windowing=windowing)
    except (ValueError, OSError, TypeError) as err:  # DicomReadError is a ValueError
        # Uploads sit in a server temp folder: name the file as the user knows it.
        message = str(err).replace(path, name)
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            message += " (the file is empty: 0 bytes)"
        raise UploadError(message) from err


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def label_colour(label: str) -> str:
    """The drawing colour of a local label."""
    index = VINDR_LOCAL_LABELS.index(label) if label in VINDR_LOCAL_LABELS else len(label)
    return PALETTE[index % len(PALETTE)]


def draw_findings(image: Image.Image, findings: Sequence[dict[str, Any]]) -> Image.Image:
    """A copy of `image` with each finding's box drawn in its label's colour and captioned `label score`."""
    overlay = image.convert("RGB")
    draw = ImageDraw.Draw(overlay)
    side = min(overlay.size)
    line = max(2, round(side / 200))
    font = _font(max(11, round(side / 32)))
    for finding in findings:
        x1, y1, x2, y2 = finding["box"]
        colour = label_colour(finding["label"])
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        score = "" if finding.get("score") is None else f" {finding['score']:.2f}"
        caption = f"{finding['label']}{score}"
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        text_width, text_height = right - left, bottom - top
        # Above the box when there is room, else inside its top edge; shifted left to stay inside the image.
        x = max(line, min(x1, overlay.width - text_width - 2 * line))
        y = y1 - text_height - 2 * line if y1 - text_height - 2 * line >= 0 else y1 + line
        draw.rectangle((x - line, y - line, x + text_width + line, y + text_height + line), fill=colour)
        draw.text((x - left, y - top), caption, fill="black", font=font)
    return overlay


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def findings_rows(findings: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """Table rows of grounded findings: label, box in pixels (0.1 px), score (3 decimals)."""
    return [[f["label"], *(_rounded(v, 1) for v in f["box"]), _rounded(f.get("score"), 3)] for f in findings]


def diagnosis_rows(parsed: dict[str, Any], label_scores: dict[str, float]) -> list[list[Any]]:
    """One row per global label: what the answer said about it and its teacher-forced probability."""
    rows = []
    for label in VINDR_GLOBAL_LABELS:
        if label in parsed["positive"] or (label == NO_FINDING and parsed["no_finding"]):
            said = "present"
        elif label in parsed["negative"]:
            said = "absent"
        else:
            said = "not mentioned"
        rows.append([label, said, _rounded(label_scores.get(label), 3)])
    return rows


def unparsed_lines(record: dict[str, Any], max_new_tokens: int) -> list[str]:
    """What did not parse, said as such: parse failures, contradictions and an answer cut at the token budget."""
    parsed = record["parsed"]
    lines = [f"did not parse: {failure}" for failure in parsed["failures"]]
    if parsed.get("contradiction"):
        lines.append("contradiction: the answer says 'No finding' and also lists findings")
    if record["truncated"]:
        lines.append(f"truncated: no end token within {max_new_tokens} new tokens (the last phrase may be cut)")
    return lines


def summary_markdown(result: dict[str, Any]) -> str:
    """One-paragraph reading of the result for the page."""
    image = result["image"]
    source = f"DICOM, windowing: {WINDOWING_CHOICES[image['windowing']]}" if image["dicom"] else "PNG/JPEG"
    lines = [f"`{image['name']}`: {image['width']} x {image['height']} px ({source})."]
    if result["task"] == "grounding":
        if result["findings"]:
            listed = ", ".join(
                f"{f['label']} {f['score']:.2f}" if f["score"] is not None else f["label"] for f in result["findings"]
            )
            lines.append(f"**{len(result['findings'])} finding(s)**: {listed}.")
        elif result["no_finding"]:
            score = result.get("no_finding_score")
            lines.append("**No finding**" + (f" (score {score:.2f})." if score is not None else "."))
        else:
            lines.append("**No box parsed** from the answer (see below).")
    else:
        positive = result["positive"] or ([NO_FINDING] if result["no_finding"] else [])
        lines.append(f"**Answer**: {', '.join(positive) if positive else 'no label parsed'}.")
    if result["unparsed"]:
        lines.append(f"{len(result['unparsed'])} part(s) of the answer did not parse.")
    return "  \n".join(lines)


def analyse_upload(
    demo_model: LiteGPTDemo,
    path: str | os.PathLike | None,
    task: str,
    windowing: str,
    progress: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Everything the page shows for one upload, as plain values (the Gradio handler only formats them).

    `progress(fraction, desc=...)` is told each step. Raises `UploadError` for an unreadable upload.
    """
    report = progress if progress is not None else (lambda *args, **kwargs: None)  # a gr.Progress may be falsy
    report(0.05, desc="Reading the image")
    image = read_upload(path, windowing)
    report(0.2, desc="Waiting for the model" if demo_model.busy() else "Generating the answer")
    record = demo_model.answer(image, task)
    report(0.9, desc="Drawing the boxes")
    parsed = record["parsed"]
    budget = demo_model.decoding.max_new_tokens[task]
    dicom = is_dicom_file(path)
    result: dict[str, Any] = {
        "task": task,
        "model": demo_model.name,
        "image": {"name": Path(path).name, "width": image.size[0], "height": image.size[1], "dicom": dicom,
                  "windowing": windowing if dicom else None},
        "text": record["text"],
        "truncated": record["truncated"],
        "no_finding": parsed["no_finding"],
        "none_listed": parsed["none_listed"],
        "contradiction": parsed["contradiction"],
        "failures": parsed["failures"],
        "unparsed": unparsed_lines(record, budget),
    }  # fmt: skip
    if task == "grounding":
        result["findings"] = [
            {"label": f["label"], "box": list(f["box"]), "grid_box": list(f["grid_box"]), "score": f["score"]}
            for f in parsed["findings"]
        ]
        result["no_finding_score"] = record["scores"].get("no_finding")
        result["rows"] = findings_rows(result["findings"])
        overlay = draw_findings(image, result["findings"])
    else:
        result.update(positive=parsed["positive"], negative=parsed["negative"], labels=record["scores"]["labels"])
        result["rows"] = diagnosis_rows(parsed, result["labels"])
        overlay = image
    report(1.0, desc="Done")
    return {"overlay": overlay, "result": result}


# ======================================================================================= examples


@dataclass
class Example:
    path: str
    label: str


def _pick_examples(manifest: dict[str, Any], root: Path, n_findings: int) -> list[tuple[Path, str]]:
    """Synthetic test images with local findings (up to `n_findings`) and one without, with their true labels."""
    chosen, normal = [], None
    for info in manifest["vindr"]["images"].values():
        truth = info["truth"]
        labels = sorted({box["class_name"] for box in truth["local"]})
        if labels and len(chosen) < n_findings:
            chosen.append((root / info["path"], ", ".join(labels)))
        elif truth["no_finding"] and normal is None:
            normal = (root / info["path"], NO_FINDING)
    return chosen + ([normal] if normal else [])


def prepare_examples(folder: str | os.PathLike, n_findings: int = 3, seed: int = 0) -> list[Example]:
    """Example uploads, generated on first start with `datasets_scripts.synthetic` and reused afterwards.

    DICOMs of the synthetic VinDr-CXR test split (labelled with the findings drawn into them) and a PNG of the
    first one. A first start writes into a temporary sibling folder and renames it, so a start that is
    interrupted never leaves a half-written example folder behind.
    """
    from datasets_scripts.synthetic import generate

    folder = Path(folder)
    if not (folder / "manifest.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            generate(staging, n_train=0, n_test=3 * (n_findings + 1), mimic_studies=0, seed=seed, progress=False,
                     overwrite=True)  # fmt: skip
            if folder.exists():  # an incomplete folder without manifest.json
                shutil.rmtree(folder)
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("generated the example images in %s", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    picked = _pick_examples(manifest, folder, n_findings)
    examples = [Example(str(path), f"synthetic DICOM {k}: {label}") for k, (path, label) in enumerate(picked, 1)]
    if picked:
        first_path, first_label = picked[0]
        png = folder / "png" / f"{first_path.stem}.png"
        if not png.is_file():
            png.parent.mkdir(exist_ok=True)
            partial = png.with_suffix(".png.partial")
            load_image(first_path).save(partial, format="PNG")
            os.replace(partial, png)
        examples.append(Example(str(png), f"synthetic PNG of DICOM 1: {first_label}"))
    return examples


# ======================================================================================= page


def build_demo(demo_model: LiteGPTDemo, examples: Sequence[Example] = (), examples_note: str | None = None):
    """The Gradio page (a `gr.Blocks`); `api_name="analyse"` is its API endpoint (`gradio_client`)."""
    import gradio as gr
    import pandas as pd

    def analyse(path, task, windowing, progress=gr.Progress()):  # noqa: B008 - Gradio's way to ask for a tracker
        try:
            out = analyse_upload(demo_model, path, task, windowing, progress=progress)
        except UploadError as err:
            logger.info("rejected upload: %s", err)
            # gr.Error renders HTML: the processor's message is text (it may hold "<...>").
            raise gr.Error(html.escape(str(err)), duration=None, print_exception=False) from None
        result = out["result"]
        columns = FINDING_COLUMNS if task == "grounding" else DIAGNOSIS_COLUMNS
        table = pd.DataFrame(result["rows"], columns=columns)
        # The label scores are the diagnosis task's answer; a grounding answer's scores are in the table and on the boxes.
        scores = gr.Label(value=result["labels"] if task == "diagnosis" else None, visible=task == "diagnosis")
        return (out["overlay"], table, scores, summary_markdown(result), result["text"], "\n".join(result["unparsed"]),
                result)  # fmt: skip

    with gr.Blocks(title="LiteGPT-CXR", analytics_enabled=False) as demo:
        gr.Markdown(
            "# LiteGPT-CXR\n"
            f"Model: `{demo_model.name}`. Upload a chest X-ray; the model lists the findings with boxes "
            "(grounded findings) or names the global labels (diagnosis). Every box is scored by the model's own token "
            f"probabilities (`exp(mean log-prob)` of its phrase).\n\n**{DISCLAIMER}**"
        )
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Chest X-ray: DICOM (.dcm, .dicom), PNG or JPEG", file_types=UPLOAD_TYPES,
                                 type="filepath", elem_id="upload")  # fmt: skip
                task = gr.Radio([(text, key) for key, text in TASKS.items()], value="grounding", label="Task",
                                elem_id="task")  # fmt: skip
                windowing = gr.Dropdown([(text, key) for key, text in WINDOWING_CHOICES.items()], value="window",
                                        label="DICOM windowing", info="Ignored for PNG/JPEG", elem_id="windowing")  # fmt: skip
                run = gr.Button("Analyse", variant="primary", elem_id="run")
                if examples:
                    gr.Examples([[e.path, "grounding", "window"] for e in examples], inputs=[upload, task, windowing],
                                example_labels=[e.label for e in examples], label="Synthetic examples",
                                cache_examples=False)  # fmt: skip
                if examples_note:
                    gr.Markdown(examples_note)
            with gr.Column(scale=2):
                overlay = gr.Image(label="Image with findings", type="pil", format="png", interactive=False, height=520,
                                   elem_id="overlay")  # fmt: skip
                summary = gr.Markdown(elem_id="summary")
                table = gr.Dataframe(headers=FINDING_COLUMNS, label="Findings (box in pixels of the original image)",
                                     interactive=False, elem_id="findings")  # fmt: skip
                scores = gr.Label(label="Global label scores (teacher-forced probability of each label)",
                                  num_top_classes=len(VINDR_GLOBAL_LABELS), visible=False, elem_id="scores")  # fmt: skip
                raw = gr.Textbox(label="Raw model answer", lines=3, interactive=False, elem_id="raw")
                unparsed = gr.Textbox(label="Did not parse", placeholder="Everything in the answer parsed.", lines=2,
                                      interactive=False, elem_id="unparsed")  # fmt: skip
                with gr.Accordion("Result as JSON", open=False):
                    result = gr.JSON(elem_id="result")
        run.click(analyse, inputs=[upload, task, windowing],
                  outputs=[overlay, table, scores, summary, raw, unparsed, result], api_name="analyse")  # fmt: skip
    return demo


# ======================================================================================= Space


def space_files() -> list[str]:
    """What a Hugging Face Space needs besides its card and requirements (docs/space/): this file, the processor's
    remote code (derived from its relative imports: the codec, the image processing and the configuration, which
    this file and the packages import too) and `SPACE_PACKAGES`. The model's own code comes with its checkpoint."""
    from litegpt_train.hub import PROCESSOR_CODE, remote_code_files

    return ["app.py", *remote_code_files(Path(__file__).resolve().parent, [PROCESSOR_CODE]), *SPACE_PACKAGES]


def write_space_folder(out_dir: str | os.PathLike) -> Path:
    """A Hugging Face Space's files in `out_dir`: `space_files()` and the card and requirements of `docs/space/`."""
    here, out = Path(__file__).resolve().parent, Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: the Space folder must hold only the Space's files")
    out.mkdir(parents=True, exist_ok=True)
    for name in (*space_files(), "docs/space/README.md", "docs/space/requirements.txt"):
        source, target = here / name, out / Path(name).name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, target)
    return out


# ======================================================================================= command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=os.environ.get("LITEGPT_MODEL"),
                        help="base folder, stage (adapter) folder or Hub id (default: $LITEGPT_MODEL)")  # fmt: skip
    parser.add_argument("--revision", default=os.environ.get("LITEGPT_MODEL_REVISION"), help="Hub revision")
    parser.add_argument("--dtype", default=os.environ.get("LITEGPT_DTYPE", "auto"),
                        help="auto, float32, bfloat16 or float16 (default: $LITEGPT_DTYPE or auto)")  # fmt: skip
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--max_new_tokens", type=int, default=None,
                        help="token budget of an answer (default: eval.py's, 512 grounding / 64 diagnosis)")  # fmt: skip
    parser.add_argument("--host", default=None, help="default: $GRADIO_SERVER_NAME or 127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default: $GRADIO_SERVER_PORT or 7860")
    parser.add_argument("--concurrency", type=int, default=1, help="requests handled at once (the model runs one)")
    parser.add_argument("--max_queue", type=int, default=20, help="requests waiting at most; more are refused")
    parser.add_argument("--max_file_size", default="100mb", help="largest upload accepted")
    parser.add_argument("--examples_dir", default=str(DEFAULT_EXAMPLES_DIR), help="where the examples are generated")
    parser.add_argument("--no_examples", action="store_true", help="start without the synthetic examples")
    parser.add_argument("--write_space", metavar="DIR", help="write a Hugging Face Space's files into DIR and exit")
    return parser


def launch(demo, args: argparse.Namespace, examples_dir: str | None, prevent_thread_lock: bool = False):
    """Queue the page with the stated limits and serve it; returns what `gr.Blocks.launch` returns."""
    import gradio as gr

    demo.queue(default_concurrency_limit=args.concurrency, max_size=args.max_queue)
    return demo.launch(
        server_name=args.host, server_port=args.port, max_file_size=args.max_file_size,
        allowed_paths=[examples_dir] if examples_dir else None, prevent_thread_lock=prevent_thread_lock,
        # System fonts: the default theme would fetch web fonts, which a hospital network (or this repo's CI) blocks.
        theme=gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    if args.write_space:
        logger.info("Space files written to %s", write_space_folder(args.write_space))
        return
    if not args.model:
        raise SystemExit("no model: pass --model (folder or Hub id) or set LITEGPT_MODEL")
    if args.concurrency < 1 or args.max_queue < 1:
        raise SystemExit("--concurrency and --max_queue must be >= 1")
    demo_model = LiteGPTDemo.load(args.model, dtype=args.dtype, device=args.device, revision=args.revision,
                                  max_new_tokens=args.max_new_tokens)  # fmt: skip
    examples, note, examples_dir = [], None, None
    if not args.no_examples:
        try:
            examples = prepare_examples(args.examples_dir)
            examples_dir = args.examples_dir
        except OSError as err:  # e.g. a read-only disk: the page works without examples, and says so
            logger.warning("no examples: %s", err)
            note = f"Examples unavailable: {html.escape(str(err))}"
    launch(build_demo(demo_model, examples, note), args, examples_dir)


if __name__ == "__main__":
    main()
