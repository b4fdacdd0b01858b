"""Library side of `train_medklip.py`: arguments, model and data preparation, the Trainer, card, eval and Hub push.

Everything that can be wrong in a configuration (an unknown preset, a data entity without a description, a missing
data folder) raises before a model is built or a step trained.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import Trainer

from .checkpoint import PRESETS, build_medklip, image_processor_for, save_medklip
from .data import ExistenceImageDataset, build_mimic_splits, group_existence_rows
from .knowledge import load_knowledge
from .modeling_medklip import MedKLIPModel

logger = logging.getLogger(__name__)

TRAINING_RECORD = "medklip_training.json"
LOSS_COMPONENTS = ("loss_cls", "loss_pos", "loss_sem")
# Files of a finished run that belong on the Hub besides the remote code (checkpoints, TensorBoard events and
# training_args.bin stay local).
REQUIRED_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "README.md")
# The remote code enters through these files (the `auto_map` of config.json); the siblings they import relatively
# come with them.
REMOTE_CODE_ENTRIES = ("configuration_medklip.py", "modeling_medklip.py")
OPTIONAL_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", TRAINING_RECORD,
                  "training_log.csv", "eval/metrics.json", "eval/report.md", "eval/existence_table.md",
                  "eval/existence_table.json")


@dataclass
class MedKLIPScriptArguments:
    """What `train_medklip.py` needs besides transformers' `TrainingArguments` (one YAML holds both)."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "a saved MedKLIP folder to start from; "
                                                                           "empty: build one from `preset`"})
    preset: str = field(default="study", metadata={"help": f"model to build when model_name_or_path is empty: {PRESETS}"})
    knowledge_file: str | None = field(default=None, metadata={"help": "entity/position descriptions (JSON); default "
                                                                       "medklip/knowledge.json"})
    vision_weights: str | None = field(default=None, metadata={"help": "ResNet-50 weights: torchvision state_dict "
                                                                       "file or timm folder (study preset)"})
    text_encoder: str | None = field(default=None, metadata={"help": "ClinicalBERT-format BERT folder (study preset)"})
    model_overrides: dict[str, Any] | str | None = field(default=None, metadata={"help": "MedKLIPConfig fields, e.g. "
                                                                                       "{\"semantic_loss_weight\": 0.5}"})
    mimic_data_dir: str | None = field(default=None, metadata={"help": "folder holding mimic-cxr(-jpg)/..."})
    mimic_settings: dict[str, Any] | str | None = field(default=None, metadata={"help": "MIMICCXRConfig settings of "
                                                                                       "the existence config"})
    dataset_cache_dir: str | None = field(default=None, metadata={"help": "datasets cache folder of the builder"})
    dataset_num_proc: int | None = field(default=None, metadata={"help": "processes converting images in the builder"})
    synthetic_data: bool = field(default=False, metadata={"help": "offline demo: write the synthetic MIMIC sample "
                                                                  "into mimic_data_dir when it does not exist"})
    synthetic_settings: dict[str, Any] | str | None = field(default=None, metadata={
        "help": "arguments of datasets_scripts.synthetic.generate (mimic_studies, seed, image_size)"})
    report_max_length: int = field(default=128, metadata={"help": "report tokens for the semantic loss"})
    semantic_loss: bool = field(default=True, metadata={"help": "feed the reports (False: L_sem off)"})
    max_train_images: int | None = field(default=None, metadata={"help": "first N training images (debugging)"})
    cache_pixels: bool = field(default=False, metadata={"help": "keep processed images in memory after their first "
                                                                "epoch (small datasets without augmentation)"})
    eval_after_training: bool = field(default=True, metadata={"help": "eval.py on eval_split with validation "
                                                                      "thresholds and baselines, into <output_dir>/eval"})
    eval_split: str = field(default="test", metadata={"help": "split scored after training"})
    eval_threshold_split: str = field(default="validation", metadata={"help": "split the thresholds come from"})
    eval_bootstrap: int = field(default=1000, metadata={"help": "bootstrap resamples of the eval intervals"})
    eval_batch_size: int = field(default=16, metadata={"help": "images per eval batch"})

    def __post_init__(self):
        for name in ("model_overrides", "mimic_settings", "synthetic_settings"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = json.loads(value) if value.strip() else None
            setattr(self, name, dict(value or {}))


def check_arguments(script_args: MedKLIPScriptArguments) -> None:
    """Fail before anything runs: preset, data folder, descriptions of every entity the data names."""
    if not script_args.model_name_or_path and script_args.preset not in PRESETS:
        raise ValueError(f"unknown preset {script_args.preset!r}; choose one of {PRESETS} or set model_name_or_path")
    if script_args.model_name_or_path and not Path(script_args.model_name_or_path, "config.json").is_file():
        raise FileNotFoundError(f"model_name_or_path {script_args.model_name_or_path} is not a saved MedKLIP folder")
    if not script_args.mimic_data_dir:
        raise ValueError("mimic_data_dir is required (the MIMIC-CXR folders, or where the synthetic sample goes)")
    if not Path(script_args.mimic_data_dir).exists() and not script_args.synthetic_data:
        raise FileNotFoundError(f"mimic_data_dir {script_args.mimic_data_dir} does not exist")
    if not script_args.model_name_or_path:
        load_knowledge(script_args.knowledge_file, entities=data_entities(script_args))


def data_entities(script_args: MedKLIPScriptArguments) -> list[str]:
    """Entities the existence data asks about: the builder's `entities` setting, else the builder's default list."""
    from datasets_scripts.mimic_reports import ENTITIES

    entities = script_args.mimic_settings.get("entities")
    if isinstance(entities, str):
        entities = [e.strip() for e in entities.split(",") if e.strip()]
    return list(entities) if entities else list(ENTITIES)


def prepare_synthetic_data(script_args: MedKLIPScriptArguments) -> None:
    """Offline demo: write the synthetic MIMIC-CXR sample into `mimic_data_dir` when it is missing."""
    if script_args.synthetic_data and not Path(script_args.mimic_data_dir).exists():
        from datasets_scripts.synthetic import generate

        settings = {"n_train": 0, "n_test": 0, **script_args.synthetic_settings}
        logger.info("writing the synthetic sample to %s (%s)", script_args.mimic_data_dir, settings)
        generate(script_args.mimic_data_dir, **settings)


def load_or_build_model(script_args: MedKLIPScriptArguments, seed: int = 0):
    """(model, tokenizer, image processor): a saved folder, or the preset with real weights when given."""
    if script_args.model_name_or_path:
        from transformers import AutoImageProcessor, AutoTokenizer

        path = script_args.model_name_or_path
        model = MedKLIPModel.from_pretrained(path)
        return model, AutoTokenizer.from_pretrained(path), AutoImageProcessor.from_pretrained(path)
    return build_medklip(script_args.preset, knowledge_file=script_args.knowledge_file,
                         entities=data_entities(script_args), vision_weights=script_args.vision_weights,
                         text_encoder=script_args.text_encoder, seed=seed, **script_args.model_overrides)


@dataclass
class PreparedData:
    train: ExistenceImageDataset
    validation: ExistenceImageDataset | None
    record: dict[str, Any]


def prepare_data(script_args: MedKLIPScriptArguments, model: MedKLIPModel, image_processor: Any,
                 num_proc: int | None = None) -> PreparedData:
    """Build the existence splits (and report texts), group them per image against the model's entities."""
    splits, reports, sources = build_mimic_splits(script_args.mimic_data_dir, script_args.mimic_settings,
                                                  script_args.dataset_cache_dir, num_proc,
                                                  with_reports=script_args.semantic_loss)
    config = model.config
    record: dict[str, Any] = {"sources": sources, "grouping": {}}
    datasets_by_split = {}
    for split in ("train", "validation"):
        if split not in splits:
            continue
        images, summary = group_existence_rows(splits[split], config.entities, config.positions, reports)
        if split == "train" and script_args.max_train_images:
            images = images[: script_args.max_train_images]
        record["grouping"][split] = summary.as_dict()
        datasets_by_split[split] = ExistenceImageDataset(splits[split], images, image_processor, config.num_positions,
                                                         cache_pixels=script_args.cache_pixels)
    if "train" not in datasets_by_split or len(datasets_by_split["train"]) == 0:
        raise ValueError(f"no training image with an existence answer (rows {sources['existence']['rows']}, skipped "
                         f"{sources['existence']['skipped']})")
    return PreparedData(datasets_by_split["train"], datasets_by_split.get("validation"), record)


class MedKLIPTrainer(Trainer):
    """`Trainer` that also logs the three loss terms (mean over the steps since the last log)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._loss_terms: dict[str, list[float]] = defaultdict(list)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        if model.training:
            for name in LOSS_COMPONENTS:
                value = getattr(outputs, name, None)
                if value is not None:
                    self._loss_terms[name].append(float(value.detach()))
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:
            for name, values in self._loss_terms.items():
                if values:
                    logs[name] = round(sum(values) / len(values), 6)
            self._loss_terms.clear()
        super().log(logs, *args, **kwargs)


# ============================================================================================== after training


def evaluate_run(output_dir: Path, script_args: MedKLIPScriptArguments, batch_size: int = 16) -> Path:
    """`litegpt_eval.evaluate` with MedKLIP's generation step on `eval_split` (thresholds from
    `eval_threshold_split`, trivial baselines), then the study's table (`eval/existence_table.md`)."""
    from litegpt_eval import EvalArguments, evaluate
    from litegpt_eval.existence_table import baseline_systems, load_eval_folder, render_markdown, study_table

    from .evaluation import generate_predictions

    out = output_dir / "eval"
    evaluate(EvalArguments(
        out=str(out),
        model=str(output_dir),
        dataset="mimic_cxr:existence",
        data_dir=script_args.mimic_data_dir,
        dataset_settings=dict(script_args.mimic_settings),
        cache_dir=script_args.dataset_cache_dir,
        split=script_args.eval_split,
        threshold_split=script_args.eval_threshold_split,
        baselines=True,
        bootstrap=script_args.eval_bootstrap,
        batch_size=batch_size,
        no_progress=True,
    ), generate=generate_predictions)  # fmt: skip
    systems = {"MedKLIP": load_eval_folder(out), **baseline_systems(out)}
    table = study_table(systems, script_args.eval_bootstrap)
    (out / "existence_table.md").write_text(render_markdown(table))
    (out / "existence_table.json").write_text(json.dumps(table, indent=1))
    return out


def write_model_card(output_dir: Path, record: dict[str, Any]) -> Path:
    """README.md of a finished run: model, use, data, training configuration, and the existence table if evaluated."""
    config = json.loads((output_dir / "config.json").read_text())
    meta = {"library_name": "transformers", "pipeline_tag": "image-classification",
            "tags": ["medklip", "chest-x-ray", "radiology", "mimic-cxr", "multi-label"]}
    lines = [
        "---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---",
        "# MedKLIP-style entity existence (LiteGPT-CXR)",
        "",
        ("A ResNet image encoder, a frozen BERT reading a description of every entity and anatomical position, and a "
         "transformer decoder whose queries are those descriptions, trained on MIMIC-CXR existence labels with "
         "`train_medklip.py` (BCE on known answers, position InfoNCE, semantic consistency with the report)."),
        "",
        f"Entities: {', '.join(config['entities'])}. Positions: {', '.join(config['positions'])}.",
        "",
        "```python",
        "from transformers import AutoImageProcessor, AutoModel",
        "model = AutoModel.from_pretrained(REPO, trust_remote_code=True)",
        "pixel_values = AutoImageProcessor.from_pretrained(REPO)(images=image, return_tensors='pt').pixel_values",
        "probabilities = model(pixel_values).logits.sigmoid()  # one column per entity, model.config.entities order",
        "```",
        "",
        "## Data",
        "",
    ]
    for source in record["data"]["sources"].values():
        lines.append(f"- `mimic_cxr:{source['config']}` (builder {source['builder_version']}, cache id "
                     f"`{source['fingerprint']}`): rows {source['rows']}, skipped {source['skipped']}")
    for split, summary in record["data"]["grouping"].items():
        lines.append(f"- {split}: {summary['images']} images, answers {summary['answers']}")
    table = output_dir / "eval" / "existence_table.md"
    if table.is_file():
        lines += ["", "## Evaluation (eval.py; details in eval/report.md)", "", table.read_text().rstrip()]
    lines += ["", "## Training configuration", "", "```yaml",
              yaml.safe_dump(json.loads(json.dumps(record["configuration"], default=str)), sort_keys=True).rstrip(),
              "```", ""]
    path = output_dir / "README.md"
    path.write_text("\n".join(lines))
    return path


def upload_file_set(output_dir: str | Path) -> list[str]:
    """Relative paths `push_run` uploads (sorted): the required files, the remote code reached from
    `REMOTE_CODE_ENTRIES` through its relative imports, the optional files present; raises naming what is missing."""
    from litegpt_train.hub import remote_code_files, select_file_set

    code = remote_code_files(output_dir, REMOTE_CODE_ENTRIES)
    return select_file_set(output_dir, (*REQUIRED_FILES, *code), OPTIONAL_FILES, "a finished MedKLIP run")


def push_run(output_dir: str | Path, repo_id: str, private: bool | None = None, token: str | None = None,
             revision: str | None = None) -> Any:
    """Create `repo_id` (private unless said otherwise) and upload exactly `upload_file_set(output_dir)`."""
    from huggingface_hub import HfApi

    files = upload_file_set(output_dir)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=True if private is None else private, exist_ok=True, repo_type="model")
    return api.upload_folder(repo_id=repo_id, folder_path=str(output_dir), allow_patterns=files, revision=revision,
                             commit_message="LiteGPT-CXR MedKLIP model")


def finish_run(output_dir: Path, model: MedKLIPModel, tokenizer: Any, image_processor: Any, record: dict[str, Any]) -> None:
    """Final weights, remote code, tokenizer, image processor, training record and card into `output_dir`."""
    save_medklip(model, tokenizer, image_processor or image_processor_for(model.config), output_dir)
    (output_dir / TRAINING_RECORD).write_text(json.dumps(record, indent=1, default=str))
    write_model_card(output_dir, record)


def training_record(script_args: MedKLIPScriptArguments, training_args: Any, data: PreparedData,
                    seconds: float | None = None) -> dict[str, Any]:
    return {
        "configuration": {"script_arguments": dataclasses.asdict(script_args),
                          "training_arguments": training_args.to_dict()},
        "data": data.record,
        "train_seconds": None if seconds is None else round(seconds, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


__all__ = [
    "LOSS_COMPONENTS",
    "TRAINING_RECORD",
    "MedKLIPScriptArguments",
    "MedKLIPTrainer",
    "PreparedData",
    "check_arguments",
    "data_entities",
    "evaluate_run",
    "finish_run",
    "load_or_build_model",
    "prepare_data",
    "prepare_synthetic_data",
    "push_run",
    "training_record",
    "upload_file_set",
    "write_model_card",
]
