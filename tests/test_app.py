"""The web demo (`app.py`) served on a free port and called through `gradio_client`, as a Space's API user would.

The model is the tiny LiteGPT taught two synthetic DICOMs (`app_support.py`): one with boxes, one normal. Every
answer the page returns is checked against the processor's own post-processing of the same model's `generate()`
output, computed here independently of the app's code path (`eval.py`'s `generate_batch`).
"""

from __future__ import annotations

import html
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from app_support import build_taught_model, free_port, served_app
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian

import app
from processing_litegpt import VINDR_GLOBAL_LABELS, load_image

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ("overlay", "table", "scores", "summary", "raw", "unparsed", "result")


# ============================================================================================ fixtures
@pytest.fixture(scope="module")
def taught(tmp_path_factory):
    return build_taught_model(tmp_path_factory.mktemp("app"))


@pytest.fixture(scope="module")
def demo_model(taught):
    return app.LiteGPTDemo.load(str(taught.model_dir))


@pytest.fixture(scope="module")
def client(demo_model, tmp_path_factory):
    with served_app(demo_model) as url:
        yield Client(
            url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")), analytics_enabled=False
        )


@pytest.fixture(scope="module")
def reference(taught):
    """`generate()` + the processor's post-processing, on a model loaded with the Auto classes."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(taught.model_dir, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(taught.model_dir, trust_remote_code=True)

    def run(path: Path, task: str, max_new_tokens: int):
        inputs = processor(images=str(path), text=processor.task_prompt(task), return_tensors="pt",
                           return_image_sizes=True)  # fmt: skip
        sizes = inputs.pop("image_sizes")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True)  # fmt: skip
        if task == "grounding":
            return processor.post_process_grounding(out, image_size=sizes)[0]
        return processor.post_process_diagnosis(out.sequences)[0]

    return run


def analyse(client: Client, path: Path, task: str = "grounding", windowing: str = "window") -> dict:
    values = client.predict(handle_file(str(path)), task, windowing, api_name="/analyse")
    return dict(zip(OUTPUTS, values))


def table_rows(table: dict) -> list[list]:
    return [list(row) for row in table["data"]]


# ============================================================================================ answers
@pytest.mark.parametrize("kind", ["dicom", "png", "jpeg"])
def test_findings_equal_the_processors_post_processing_of_the_same_output(client, taught, reference, demo_model, kind,
                                                                          tmp_path):  # fmt: skip
    path = {"dicom": taught.abnormal.path, "png": taught.png, "jpeg": tmp_path / "abnormal.jpg"}[kind]
    if kind == "jpeg":
        Image.open(taught.png).save(path, quality=95)  # lossy: other pixels, the answer may differ
    out = analyse(client, path)
    result = out["result"]
    expected = reference(path, "grounding", demo_model.decoding.max_new_tokens["grounding"])

    assert result["text"] == out["raw"] == expected["text"]
    assert [(f["label"], f["box"], f["grid_box"]) for f in result["findings"]] == [
        (f["label"], list(f["box"]), list(f["grid_box"])) for f in expected["findings"]
    ]
    assert [f["score"] for f in result["findings"]] == pytest.approx(
        [f["score"] for f in expected["findings"]], rel=1e-5
    )
    assert result["failures"] == expected["failures"]
    # The taught answer, boxes included (so the comparison above compared something); the JPEG is not that image.
    if kind != "jpeg":
        assert result["failures"] == [] and out["unparsed"] == ""
        assert [f["label"] for f in result["findings"]] == [label for label, _ in taught.abnormal.local_boxes]
        for finding, (_, box) in zip(result["findings"], taught.abnormal.local_boxes):
            assert np.allclose(finding["box"], box, atol=0.5 * max(taught.abnormal.width, taught.abnormal.height) / 100)
    # The table is the findings, in pixels, rounded for reading.
    assert table_rows(out["table"]) == [
        [f["label"], *(round(v, 1) for v in f["box"]), round(f["score"], 3)] for f in result["findings"]
    ]
    assert out["scores"]["visible"] is False and not out["scores"]["value"]  # label scores: the diagnosis task's
    assert result["image"] == {"name": path.name, "width": taught.abnormal.width, "height": taught.abnormal.height,
                               "dicom": kind == "dicom", "windowing": "window" if kind == "dicom" else None}  # fmt: skip


def test_overlay_is_the_image_with_each_box_drawn_in_its_label_colour(client, taught):
    out = analyse(client, taught.abnormal.path)
    overlay = np.asarray(Image.open(out["overlay"]).convert("RGB"))
    plain = np.asarray(load_image(taught.abnormal.path))
    assert overlay.shape == plain.shape == (taught.abnormal.height, taught.abnormal.width, 3)
    changed = np.any(overlay != plain, axis=-1)
    for finding in out["result"]["findings"]:
        x1, y1, x2, y2 = (round(v) for v in finding["box"])
        colour = np.array(Image.new("RGB", (1, 1), app.label_colour(finding["label"])).getpixel((0, 0)))
        left_edge = overlay[y1 + 2 : y2 - 1, x1]  # below the caption, above the bottom edge
        assert np.all(left_edge == colour), finding
        assert not changed[y1 + 4 : y2 - 4, x1 + 4 : x2 - 4].any()  # the inside of the box is the image
    assert changed.any()


def test_normal_image_answers_no_finding_on_the_plain_image(client, taught, reference, demo_model):
    out = analyse(client, taught.normal.path)
    expected = reference(taught.normal.path, "grounding", demo_model.decoding.max_new_tokens["grounding"])
    assert out["result"]["findings"] == expected["findings"] == []
    assert out["result"]["no_finding"] is expected["no_finding"] is True
    assert 0.5 < out["result"]["no_finding_score"] <= 1.0
    assert table_rows(out["table"]) == []
    assert "**No finding**" in out["summary"]
    assert np.array_equal(
        np.asarray(Image.open(out["overlay"]).convert("RGB")), np.asarray(load_image(taught.normal.path))
    )


def test_diagnosis_shows_every_global_label_with_its_score(client, taught, reference, demo_model):
    out = analyse(client, taught.abnormal.path, task="diagnosis")
    result = out["result"]
    expected = reference(taught.abnormal.path, "diagnosis", demo_model.decoding.max_new_tokens["diagnosis"])
    assert result["text"] == expected["text"]
    assert result["positive"] == expected["positive"] and result["positive"]  # the taught global label(s)
    assert sorted(result["labels"]) == sorted(VINDR_GLOBAL_LABELS)
    assert all(0.0 <= score <= 1.0 for score in result["labels"].values())
    best = max(result["labels"], key=result["labels"].get)
    assert best in result["positive"]
    rows = {row[0]: row[1:] for row in table_rows(out["table"])}
    assert list(rows) == list(VINDR_GLOBAL_LABELS)
    for label, (said, score) in rows.items():
        assert said == ("present" if label in result["positive"] else "not mentioned")
        assert score == round(result["labels"][label], 3)
    assert out["scores"]["visible"] is True
    shown = {c["label"]: c["confidence"] for c in out["scores"]["value"]["confidences"]}
    assert shown == pytest.approx(result["labels"])


def test_what_did_not_parse_is_shown_as_such(tiny_checkpoint, taught):
    """The untaught tiny model answers gibberish: every failure and the cut answer are listed, nothing is guessed."""
    from transformers import AutoProcessor

    untaught = app.LiteGPTDemo.load(str(tiny_checkpoint), max_new_tokens=40)
    result = app.analyse_upload(untaught, taught.abnormal.path, "grounding", "window")["result"]
    expected = AutoProcessor.from_pretrained(tiny_checkpoint, trust_remote_code=True).post_process_grounding(
        [result["text"]], image_size=(taught.abnormal.width, taught.abnormal.height)
    )[0]
    assert result["failures"] == expected["failures"] and result["failures"]
    assert result["findings"] == [] == expected["findings"] and result["rows"] == []
    assert result["unparsed"][: len(result["failures"])] == [f"did not parse: {f}" for f in result["failures"]]
    assert result["truncated"] is True
    assert result["unparsed"][-1] == "truncated: no end token within 40 new tokens (the last phrase may be cut)"
    summary = app.summary_markdown(result)
    assert (
        "**No box parsed**" in summary and f"{len(result['unparsed'])} part(s) of the answer did not parse" in summary
    )


def test_windowing_choice_sets_the_image_the_model_sees(client, tmp_path):
    from test_dicom import RAMP, write_dicom

    path = write_dicom(tmp_path / "windowed.dcm", np.tile(RAMP, (8, 2)), center=1000, width=800)
    seen = {}
    for windowing in ("window", "minmax"):
        out = analyse(client, path, windowing=windowing)
        seen[windowing] = np.asarray(Image.open(out["overlay"]).convert("RGB"))
        assert out["result"]["image"]["windowing"] == windowing
        if not out["result"]["findings"]:  # boxes would cover pixels
            assert np.array_equal(seen[windowing], np.asarray(load_image(path, windowing=windowing)))
    assert not np.array_equal(seen["window"], seen["minmax"])


# ============================================================================================ bad uploads
def write_multi_frame(source: Path, path: Path) -> Path:
    """The synthetic DICOM `source` with its image stored twice, as a 2-frame DICOM."""
    ds = pydicom.dcmread(source)
    frame = ds.pixel_array
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.NumberOfFrames = 2
    ds.PixelData = np.stack([frame, frame]).astype(frame.dtype.newbyteorder("<")).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def bad_upload(kind: str, folder: Path, source: Path) -> Path:
    if kind == "not_an_image":
        path = folder / "report.png"
        path.write_text("FINDINGS: none. This is a text file, not an image.\n")
    elif kind == "empty":
        path = folder / "empty.dcm"
        path.write_bytes(b"")
    else:
        path = write_multi_frame(source, folder / "cine.dcm")
    return path


@pytest.mark.parametrize("kind", ["not_an_image", "empty", "multi_frame"])
def test_bad_upload_shows_the_processors_message_and_the_server_keeps_serving(client, taught, tmp_path, kind):
    path = bad_upload(kind, tmp_path, taught.abnormal.path)
    with pytest.raises(Exception) as processor_error:
        load_image(path)
    expected = str(processor_error.value).replace(str(path), path.name)

    with pytest.raises(AppError) as page_error:
        analyse(client, path)
    message = html.unescape(page_error.value.message)
    assert message.startswith(expected)
    assert "Traceback" not in message and str(tmp_path) not in message
    if kind == "empty":
        assert message.endswith("(the file is empty: 0 bytes)")
    if kind == "multi_frame":
        assert "multi-frame DICOM (2 frames)" in message

    assert analyse(client, taught.normal.path)["result"]["no_finding"] is True  # still serving


# ============================================================================================ queue, progress
def test_concurrent_requests_do_not_mix_their_outputs(client, taught):
    """Three requests in flight at once (the server runs two at a time) each get their own answer."""
    requests = [(taught.abnormal.path, "grounding"), (taught.png, "diagnosis"), (taught.normal.path, "grounding")]
    alone = [analyse(client, path, task)["result"] for path, task in requests]
    jobs = [client.submit(handle_file(str(path)), task, "window", api_name="/analyse") for path, task in requests]
    together = [dict(zip(OUTPUTS, job.result(timeout=300)))["result"] for job in jobs]
    assert together == alone
    assert len({json.dumps(result, sort_keys=True) for result in together}) == 3


def test_progress_is_reported_step_by_step(demo_model, taught):
    steps = []
    app.analyse_upload(demo_model, taught.abnormal.path, "grounding", "window",
                       progress=lambda fraction, desc: steps.append((fraction, desc)))  # fmt: skip
    assert [desc for _, desc in steps] == ["Reading the image", "Generating the answer", "Drawing the boxes", "Done"]
    assert [fraction for fraction, _ in steps] == sorted(fraction for fraction, _ in steps)


def test_queue_runs_concurrency_requests_holds_max_queue_and_refuses_more(demo_model, taught, tmp_path):
    """`--concurrency 1 --max_queue 1`: with the model held busy, one request runs, one waits, a third is refused."""
    from gradio_client.utils import Status

    with served_app(demo_model, concurrency=1, max_queue=1) as url:
        queue_client = Client(url, verbose=False, download_files=str(tmp_path), analytics_enabled=False)
        with demo_model._lock:  # the model is busy: the running request waits inside the handler
            running = queue_client.submit(
                handle_file(str(taught.normal.path)), "grounding", "window", api_name="/analyse"
            )
            wait_for(lambda: running.status().code == Status.PROGRESS)
            waiting = queue_client.submit(
                handle_file(str(taught.normal.path)), "grounding", "window", api_name="/analyse"
            )
            wait_for(lambda: waiting.status().code == Status.IN_QUEUE)
            refused = queue_client.submit(
                handle_file(str(taught.normal.path)), "grounding", "window", api_name="/analyse"
            )
            with pytest.raises(Exception, match="[Qq]ueue is full"):
                refused.result(timeout=120)
            assert running.status().progress_data[-1].desc == "Waiting for the model"
        for job in (running, waiting):
            assert dict(zip(OUTPUTS, job.result(timeout=300)))["result"]["no_finding"] is True


def wait_for(condition, tries: int = 600, pause: float = 0.1) -> None:
    """Poll `condition` (bounded: at most `tries` times)."""
    for _ in range(tries):
        if condition():
            return
        time.sleep(pause)
    raise AssertionError("condition not reached")


# ============================================================================================ loading, examples
def test_an_adapter_folder_loads_on_the_base_its_config_names(taught, tmp_path):
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from modeling_litegpt import LiteGPTForConditionalGeneration

    base = AutoModelForImageTextToText.from_pretrained(taught.model_dir, trust_remote_code=True)
    peft_model = get_peft_model(
        base, LiteGPTForConditionalGeneration.lora_config(r=2, lora_alpha=4, base_model_name_or_path=str(taught.model_dir))
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # LoRA starts at zero: make the adapter change the answer's logits
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    AutoProcessor.from_pretrained(taught.model_dir, trust_remote_code=True).save_pretrained(adapter)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(taught.model_dir)

    loaded = app.LiteGPTDemo.load(str(adapter))
    inputs = loaded.processor(images=str(taught.normal.path), text=loaded.processor.task_prompt("grounding"),
                              return_tensors="pt")  # fmt: skip
    fresh_base = AutoModelForImageTextToText.from_pretrained(taught.model_dir, trust_remote_code=True).eval()
    with torch.no_grad():
        got = loaded.model(**inputs).logits
        bare = fresh_base(**inputs).logits
        expected = PeftModel.from_pretrained(fresh_base, adapter).eval()(**inputs).logits
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, bare, atol=1e-3)


def test_examples_are_generated_on_first_start_and_reused(tmp_path):
    folder = tmp_path / "examples"
    first = app.prepare_examples(folder)
    assert [Path(e.path).suffix for e in first] == [".dicom"] * (len(first) - 1) + [".png"]
    assert len(first) >= 3 and first[-2].label == f"synthetic DICOM {len(first) - 1}: No finding"
    manifest = json.loads((folder / "manifest.json").read_text())
    truths = {Path(info["path"]).name: info["truth"] for info in manifest["vindr"]["images"].values()}
    for k, example in enumerate(first[:-2], 1):
        labels = sorted({box["class_name"] for box in truths[Path(example.path).name]["local"]})
        assert example.label == f"synthetic DICOM {k}: {', '.join(labels)}"
    assert first[-1].label == first[0].label.replace("DICOM 1", "PNG of DICOM 1")
    assert np.array_equal(np.asarray(load_image(first[-1].path)), np.asarray(load_image(first[0].path)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["examples"]  # no staging folder left behind

    stamp = (folder / "manifest.json").stat().st_mtime_ns
    assert app.prepare_examples(folder) == first
    assert (folder / "manifest.json").stat().st_mtime_ns == stamp


# ============================================================================================ Space
def requirement_specifiers(lines) -> dict[str, str]:
    """`{name: version specifier}` of requirement strings (comments and blank lines skipped)."""
    from packaging.requirements import Requirement

    specs = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            specs[requirement.name.lower()] = str(requirement.specifier)
    return specs


def test_space_requirements_pin_the_projects_versions():
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml with the standard library")

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = requirement_specifiers(project["dependencies"] + project["optional-dependencies"]["app"])
    space = requirement_specifiers((ROOT / "docs" / "space" / "requirements.txt").read_text().splitlines())
    assert {"torch", "transformers", "peft", "pydicom", "timm"} <= set(space)
    for name, specifier in space.items():
        assert name in declared, f"{name} is not a dependency of the project"
        assert specifier == declared[name], name
    card = (ROOT / "docs" / "space" / "README.md").read_text()
    assert f"sdk_version: {declared['gradio'].removeprefix('==')}" in card and "app_file: app.py" in card


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def fake_hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """`folder` as the cached snapshot of the Hub model `repo_id` (the layout huggingface_hub reads offline)."""
    commit = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


@pytest.mark.slow
def test_space_folder_runs_app_py_unchanged_on_a_hub_model(taught, client, tmp_path):
    """The Space's file set, started as Spaces start it (`python app.py`, model and address from the environment)."""
    space = tmp_path / "space"
    app.main(["--write_space", str(space)])
    assert sorted(p.name for p in space.iterdir()) == sorted(["README.md", "requirements.txt", *app.space_files()])
    assert {"codec_litegpt.py", "image_processing_litegpt.py", "configuration_litegpt.py"} <= set(app.space_files())
    fake_hub_cache(tmp_path / "hf" / "hub", "litegpt-tests/tiny-demo", taught.model_dir)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(LITEGPT_MODEL="litegpt-tests/tiny-demo", HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1",
               GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), XDG_CACHE_HOME=str(tmp_path / "cache"),
               GRADIO_TEMP_DIR=str(tmp_path / "gradio"),
               OMP_NUM_THREADS="1")  # fmt: skip
    log = (tmp_path / "app.log").open("w")
    process = subprocess.Popen(
        # As a Space starts it: the folder itself first on sys.path (`-I` would leave it out and let the installed
        # package answer the imports), no PYTHON* variables (-E), no user site (-s).
        [sys.executable, "-E", "-s", "app.py"], cwd=space, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        for _ in range(240):  # up to 2 minutes to load the model, write the examples and start serving
            if process.poll() is not None or port_open(port):
                break
            time.sleep(0.5)
        assert port_open(port), (tmp_path / "app.log").read_text()[-3000:]
        space_client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path / "downloads"),
                              analytics_enabled=False)  # fmt: skip
        from_space = analyse(space_client, taught.abnormal.path)["result"]
        in_process = analyse(client, taught.abnormal.path)["result"]
        assert from_space["model"] == "litegpt-tests/tiny-demo"
        assert {k: v for k, v in from_space.items() if k != "model"} == {
            k: v for k, v in in_process.items() if k != "model"
        }
        assert (tmp_path / "cache" / "litegpt-cxr" / "app-examples" / "manifest.json").is_file()
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()
