"""Support for the web demo's tests (`test_app.py`, `test_app_browser.py`): a taught tiny model and a served page.

A tiny LiteGPT that has learned the answers of two synthetic DICOMs, for the web demo's tests and screenshot.

The `tiny` preset (random weights, character-level tokenizer) answers gibberish, which would leave the page's boxes,
table and scores untested. So the model assembled exactly as the other tests do is trained here, for a fixed number of
full-batch Adam steps, on two images of the synthetic VinDr-CXR test split: one with local findings (its true boxes
and global labels are the answers) and one normal image ("No finding" for both tasks). It then answers those two
images as taught, boxes included, with scores from its real token probabilities; it reads nothing else.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from tiny_tokenizer import build_tiny_tokenizer

from configuration_litegpt import LiteGPTConfig
from processing_litegpt import NO_FINDING, format_diagnosis_answer, format_grounding_answer, load_image

TRAIN_STEPS = 150
LEARNING_RATE = 1e-2


@dataclass
class TaughtImage:
    """A synthetic DICOM and the answers the tiny model was taught for it."""

    path: Path
    width: int
    height: int
    grounding: str
    diagnosis: str
    local_boxes: list[tuple[str, list[float]]]


def synthetic_images(out_dir: Path, n_test: int = 12, seed: int = 0) -> dict:
    """The synthetic VinDr-CXR test split (no training split, no MIMIC) and its manifest.

    The defaults are those of `app.prepare_examples` (12 test images of seed 0, 256 px), so the page's examples hold
    the normal image the model is taught (the browser test clicks it).
    """
    from datasets_scripts.synthetic import generate

    generate(out_dir, n_train=0, n_test=n_test, mimic_studies=0, seed=seed, image_size=256, progress=False)
    return json.loads((out_dir / "manifest.json").read_text())


def choose_images(manifest: dict, root: Path) -> tuple[TaughtImage, TaughtImage]:
    """The image with the most local boxes among those with a global label (the first of equals), and the first
    normal image, with their answers."""
    abnormal = normal = None
    for info in manifest["vindr"]["images"].values():
        truth = info["truth"]
        path, width, height = root / info["path"], info["columns"], info["rows"]
        most_boxes = len(truth["local"]) > (len(abnormal.local_boxes) if abnormal else 0)
        if most_boxes and truth["global_labels"]:
            boxes = [(box["class_name"], box["box"]) for box in truth["local"]]
            abnormal = TaughtImage(path, width, height, format_grounding_answer(boxes, width, height),
                                   format_diagnosis_answer(truth["global_labels"]),
                                   boxes)  # fmt: skip
        if normal is None and truth["no_finding"]:
            normal = TaughtImage(path, width, height, format_grounding_answer([], width, height, no_finding=True),
                                 format_diagnosis_answer([NO_FINDING]), [])  # fmt: skip
    if abnormal is None or normal is None:
        raise RuntimeError("the synthetic test split has no image with boxes and a global label, or no normal image")
    return abnormal, normal


def teach_tiny_model(images: tuple[TaughtImage, ...], out_dir: Path, seed: int = 0) -> Path:
    """Train the tiny model on the images' answers (both tasks) and save it as a LiteGPT folder."""
    from litegpt_train.base import assemble_litegpt, save_litegpt

    model, processor = assemble_litegpt(LiteGPTConfig.from_preset("tiny"), build_tiny_tokenizer(), seed=seed)
    batches = []
    for image in images:
        pixels = load_image(image.path)
        for task, answer in (("grounding", image.grounding), ("diagnosis", image.diagnosis)):
            prompt_length = processor(images=pixels, text=processor.task_prompt(task), return_tensors="pt")[
                "input_ids"
            ].shape[1]
            inputs = processor(images=pixels, text=processor.task_prompt(task, answer=answer), return_tensors="pt")
            labels = inputs["input_ids"].clone()
            labels[:, :prompt_length] = -100  # loss on the answer and </s> only
            batches.append((inputs, labels))
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)
    model.train()
    for _ in range(TRAIN_STEPS):
        loss = sum(model(**inputs, labels=labels).loss for inputs, labels in batches)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return save_litegpt(model, processor, out_dir)


def build_taught_model(root: Path) -> SimpleNamespace:
    """Synthetic images under `root/data`, the taught model under `root/model` and the abnormal DICOM as a PNG.

    Returns `model_dir`, `abnormal` and `normal` (`TaughtImage`s) and `png`, the abnormal image as the 8-bit PNG the
    app makes of the DICOM with its stored window.
    """
    manifest = synthetic_images(root / "data")
    abnormal, normal = choose_images(manifest, root / "data")
    model_dir = teach_tiny_model((abnormal, normal), root / "model")
    png = root / "abnormal.png"
    load_image(abnormal.path).save(png)
    return SimpleNamespace(model_dir=model_dir, abnormal=abnormal, normal=normal, png=png)


# Gradio names the files it caches (uploads, output images) by their content, and rewrites such a file in place
# (truncate, write) each time it is produced again. Two test processes serving the same image would share one file,
# one rewriting it while the other's client reads it; so each test process gets its own cache folder.
_PROCESS_GRADIO_CACHE = tempfile.mkdtemp(prefix=f"litegpt-test-gradio-{os.getpid()}-")
atexit.register(shutil.rmtree, _PROCESS_GRADIO_CACHE, ignore_errors=True)


def use_process_gradio_cache() -> None:
    """Point Gradio at this process's cache folder (read when a page is built and when a request is checked)."""
    os.environ["GRADIO_TEMP_DIR"] = _PROCESS_GRADIO_CACHE


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def served_app(demo_model, examples: Sequence = (), examples_dir: str | None = None, concurrency: int = 2,
               max_queue: int = 8) -> Iterator[str]:  # fmt: skip
    """`app.py`'s page for `demo_model`, queued and launched by `app.launch` on a free port; yields its URL."""
    import app

    use_process_gradio_cache()
    args = app.build_parser().parse_args(
        [
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--concurrency",
            str(concurrency),
            "--max_queue",
            str(max_queue),
        ]
    )
    demo = app.build_demo(demo_model, examples)
    app.launch(demo, args, examples_dir, prevent_thread_lock=True)
    try:
        yield f"http://127.0.0.1:{args.port}/"
    finally:
        demo.close()
