"""A finished stage as a Hub repository: the exact file set, its model card, and the upload.

`upload_file_set` is the single source of truth for what `push_stage` sends, so tests can check it offline.
The adapter's `base_model_name_or_path` must name a Hub base that carries the remote code: a local base path
is rewritten to `hub_base_model_id` in the uploaded copy only (the local folder keeps loading offline).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

# Files of a stage folder that belong on the Hub, besides the processor's remote code (`remote_code_files`);
# training_args.bin (pickle), checkpoints and TensorBoard event files stay local.
REQUIRED_FILES = ("adapter_config.json", "adapter_model.safetensors", "processor_config.json", "README.md")
OPTIONAL_FILES = (
    "chat_template.jinja",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "litegpt_training.json",
    "training_log.csv",
    "eval/metrics.json",
    "eval/report.md",
)
TRAINING_RECORD = "litegpt_training.json"
# Remote code enters a folder through these files; the siblings they import relatively come with them.
PROCESSOR_CODE = "processing_litegpt.py"
MODEL_CODE = "modeling_litegpt.py"


def remote_code_files(folder: str | Path, entry_files: Iterable[str]) -> list[str]:
    """The remote code of `folder` reached from `entry_files`: each entry and, recursively, every sibling it imports
    relatively (`from .x import ...`), which is what transformers copies on `save_pretrained` and downloads from the
    Hub with it. Sorted names; an imported sibling missing from the folder is listed too (callers check presence)."""
    from transformers.dynamic_module_utils import get_relative_imports

    folder = Path(folder)
    found: set[str] = set()
    pending = list(entry_files)
    while pending:
        name = pending.pop()
        if name in found:
            continue
        found.add(name)
        if (folder / name).is_file():
            pending += [f"{module}.py" for module in get_relative_imports(folder / name)]
    return sorted(found)


def missing_files(folder: str | Path, names: Iterable[str]) -> list[str]:
    """The names of `names` that are not files in `folder`."""
    return [name for name in names if not (Path(folder) / name).is_file()]


def upload_file_set(stage_dir: str | Path) -> list[str]:
    """Relative paths `push_stage` uploads from `stage_dir` (sorted): the required files, the optional ones present
    and the processor's remote code. Raises naming what is missing (a required file, an imported sibling)."""
    stage_dir = Path(stage_dir)
    code = remote_code_files(stage_dir, [PROCESSOR_CODE]) if (stage_dir / PROCESSOR_CODE).is_file() else []
    return select_file_set(stage_dir, (*REQUIRED_FILES, *code), OPTIONAL_FILES, "a finished stage")


def select_file_set(folder: str | Path, required: Iterable[str], optional: Iterable[str], what: str) -> list[str]:
    """The `required` files (all must exist, else an error saying `folder` is not `what` and naming the missing ones)
    and the `optional` ones that exist, as sorted relative paths (LiteGPT's stages and MedKLIP's runs)."""
    required = list(required)
    missing = missing_files(folder, required)
    if missing:
        raise FileNotFoundError(f"{folder} is not {what}: missing {missing}")
    present = [name for name in optional if (Path(folder) / name).is_file()]
    return sorted({*required, *present})


def staged_upload_folder(stage_dir: str | Path, hub_base_model_id: str, out_dir: str | Path) -> list[str]:
    """Copy the upload file set to `out_dir` with the adapter pointing at `hub_base_model_id`; returns the files."""
    stage_dir, out_dir = Path(stage_dir), Path(out_dir)
    files = upload_file_set(stage_dir)
    for name in files:
        (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(stage_dir / name, out_dir / name)
    config_path = out_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = hub_base_model_id
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    card = out_dir / "README.md"
    card.write_text(_set_card_base(card.read_text(), hub_base_model_id))
    return files


def push_stage(
    stage_dir: str | Path,
    repo_id: str,
    hub_base_model_id: str,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
) -> Any:
    """Create `repo_id` (if needed) and upload the stage's file set in one commit."""
    return upload_staged_copy(
        lambda tmp: staged_upload_folder(stage_dir, hub_base_model_id, tmp),
        repo_id,
        f"LiteGPT-CXR {Path(stage_dir).name} adapter",
        private=private,
        token=token,
        revision=revision,
    )


def upload_staged_copy(
    stage: Callable[[str], list[str]],
    repo_id: str,
    commit_message: str,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
) -> Any:
    """Create `repo_id` (if needed) and upload, in one commit, the files that `stage(folder)` copies into a
    temporary folder (and returns): the local folder is never modified."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        files = stage(tmp)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=tmp, allow_patterns=files, revision=revision, commit_message=commit_message
        )
    logger.info("pushed %d files to %s (%s)", len(files), repo_id, commit_message)
    return commit


# ----------------------------------------------------------------------------------------- model card
def _set_card_base(card: str, base: str) -> str:
    if not card.startswith("---\n"):
        return card
    header, body = card[4:].split("\n---\n", 1)
    meta = yaml.safe_load(header) or {}
    meta["base_model"] = base
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n" + body


def _headline_metrics(metrics: dict[str, Any]) -> list[tuple[str, Any]]:
    """(name, value) rows of the card's results table, from eval.py's metrics.json (keys that exist only)."""
    wanted = {
        "Finding F1 (strict), the paper's Table 1 (stage-2 answers)": ("tasks", "diagnosis", "finding", "strict", "Finding", "f1"),
        "Stage-1 Finding F1 (strict)": ("tasks", "grounding", "finding", "strict", "Finding", "f1"),
        "Local labels micro-F1 (strict)": ("tasks", "grounding", "classification", "strict", "averages", "micro", "f1"),
        "Acc@IoU 0.3 (paper)": ("tasks", "grounding", "localization", "acc_iou", "paper", "0.3"),
        "Acc@IoU 0.5 (paper)": ("tasks", "grounding", "localization", "acc_iou", "paper", "0.5"),
        "Global labels micro-F1 (strict)": ("tasks", "diagnosis", "classification", "strict", "averages", "micro", "f1"),
    }
    rows = []
    for name, path in wanted.items():
        value: Any = metrics
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, dict):
            value = value.get("value")
        if isinstance(value, (int, float)):
            rows.append((name, value))
    return rows


def write_model_card(
    stage_dir: str | Path,
    stage: str,
    base_model: str,
    training_config: dict[str, Any],
    data_sources: list[dict[str, Any]],
) -> Path:
    """README.md of a stage folder: what was trained on what, how, with eval results when eval/metrics.json exists."""
    stage_dir = Path(stage_dir)
    meta = {
        "base_model": base_model,
        "library_name": "peft",
        "pipeline_tag": "image-text-to-text",
        "tags": ["litegpt", "chest-x-ray", "radiology", "lora", "trl", "sft", f"stage-{stage}"],
    }
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).rstrip(),
        "---",
        f"# LiteGPT-CXR: {stage} stage (LoRA adapter + projector)",
        "",
        (
            "A PEFT adapter (LoRA on the language model's q/v projections, projector saved in full) trained with "
            f"TRL's `SFTTrainer` by `train_sft.py`. The base `{base_model}` carries the model's remote code."
        ),
        "",
        "```python",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "model = AutoModelForImageTextToText.from_pretrained(REPO, trust_remote_code=True)  # base + adapter",
        "processor = AutoProcessor.from_pretrained(REPO, trust_remote_code=True)",
        "```",
        "",
        "## Data",
        "",
    ]
    for source in data_sources:
        lines.append(
            f"- `{source['dataset']}:{source['config']}` (builder {source['builder_version']}, cache id "
            f"`{source['fingerprint']}`): rows {source['rows']}, skipped {source['skipped']}"
        )
    metrics_path = stage_dir / "eval" / "metrics.json"
    if metrics_path.is_file():
        rows = _headline_metrics(json.loads(metrics_path.read_text()))
        lines += ["", "## Evaluation (eval.py; details in eval/report.md)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value:.4g} |" for name, value in rows]
    lines += [
        "",
        "## Training configuration",
        "",
        "```yaml",
        yaml.safe_dump(_jsonable(training_config), sort_keys=True).rstrip(),
        "```",
        "",
    ]
    path = stage_dir / "README.md"
    path.write_text("\n".join(lines))
    return path


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


__all__ = [
    "MODEL_CODE",
    "OPTIONAL_FILES",
    "PROCESSOR_CODE",
    "REQUIRED_FILES",
    "TRAINING_RECORD",
    "missing_files",
    "push_stage",
    "remote_code_files",
    "select_file_set",
    "staged_upload_folder",
    "upload_file_set",
    "upload_staged_copy",
    "write_model_card",
]
