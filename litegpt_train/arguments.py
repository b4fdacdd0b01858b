"""Script arguments of `train_sft.py` (everything that is not one of TRL's `SFTConfig` fields) and their checks.

Every check here runs before any model is loaded or any step is trained: a wrong config fails in seconds.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .schedule import LR_SCHEDULES, MINIGPTV2_SCHEDULES, TRAINER_SCHEDULE

# Stage name -> (dataset family, builder config). VinDr stages are the paper's; MIMIC ones are extra.
STAGE_SOURCES: dict[str, tuple[str, str]] = {
    "grounding": ("vindr_cxr", "grounding"),
    "diagnosis": ("vindr_cxr", "diagnosis"),
    "report": ("mimic_cxr", "report"),
    "existence": ("mimic_cxr", "existence"),
}
LOSS_NORMALIZATIONS = ("batch", "dataset")  # see litegpt_train.trainer.mean_loss_tokens_per_row
QUANTIZATION_CHOICES = ("none", "8bit", "4bit")
PAPER_LORA_MODULES = ("q_proj", "v_proj")
EVAL_DTYPES = ("auto", "float32", "bfloat16", "float16")
LM_LORA_MODULE_CHOICES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
INIT_NONE = "none"


@dataclass
class LiteGPTScriptArguments:
    """What `train_sft.py` needs besides TRL's `SFTConfig` (one YAML holds both; unknown keys are errors)."""

    model_name_or_path: str = field(
        default=None,
        metadata={"help": "LiteGPT base checkpoint (folder or Hub id) carrying the remote code; see scripts/convert_litegpt.py"},
    )
    model_revision: str | None = field(default=None, metadata={"help": "Hub revision of the base (pin it with remote code)"})
    base_preset: str | None = field(
        default=None,
        metadata={"help": "offline demo: if model_name_or_path does not exist, build it from this LiteGPTConfig preset "
                          "with the SmolLM2 GGUF LM (scripts.litegpt_checkpoint)"},
    )
    stages: list[str] = field(
        default_factory=lambda: ["grounding", "diagnosis"],
        metadata={"help": f"stages in order, each from the previous one's weights; choices {sorted(STAGE_SOURCES)}"},
    )
    stage: str | None = field(default=None, metadata={"help": "run only this stage (overrides `stages`)"})
    init_from: str | None = field(
        default=None,
        metadata={"help": "adapter folder the first stage starts from: the MiniGPT-v2 init adapter of "
                          "scripts/convert_litegpt.py ([C]'s stage-1 init), or a finished stage (e.g. runs/grounding); "
                          "'none' or empty: a fresh LoRA"},
    )
    data_dir: str | None = field(default=None, metadata={"help": "VinDr-CXR folder (.../vindr-cxr/1.0.0)"})
    mimic_data_dir: str | None = field(default=None, metadata={"help": "folder holding mimic-cxr(-jpg)/... (report/existence)"})
    dataset_settings: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "VinDrCXRConfig settings (JSON on the command line), e.g. {\"dedup\": \"mean\"}"}
    )
    mimic_settings: dict[str, Any] | str | None = field(default=None, metadata={"help": "MIMICCXRConfig settings"})
    mix: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "extra tasks mixed into a stage's training rows, e.g. {\"diagnosis\": [\"existence\"]}"},
    )
    dataset_cache_dir: str | None = field(default=None, metadata={"help": "datasets cache folder of the builders"})
    max_train_samples: int | None = field(default=None, metadata={"help": "first N training rows per stage (debugging)"})
    synthetic_data: bool = field(
        default=False,
        metadata={"help": "offline demo: generate the synthetic sample (datasets_scripts.synthetic) when data_dir is missing"},
    )
    synthetic_settings: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "arguments of datasets_scripts.synthetic.generate (n_train, n_test, seed, ...)"}
    )
    encoder_warmup_epochs: int = field(
        default=0,
        metadata={"help": "DEMO-ONLY: when this script builds the base (base_preset), first train its random vision "
                          "encoders this many epochs on the first stage's training images (patch x local-label "
                          "targets, litegpt_train.encoder_warmup), a stand-in for the pretraining the paper's encoders "
                          "have; they are frozen again for the SFT stages. 0: off (the paper)"},
    )
    encoder_warmup_learning_rate: float = field(
        default=1e-3, metadata={"help": "learning rate of the demo-only encoder warm-up"}
    )
    model_dtype: str = field(
        default="float32",
        metadata={"help": "dtype the weights load in (auto, float32, bfloat16, float16); mixed precision is SFTConfig's bf16/fp16"},
    )
    quantization: str = field(default="none", metadata={"help": f"LM weights: {QUANTIZATION_CHOICES} (paper: 8bit)"})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank on the LM's q/v ([P] 64)"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha ([C] 16)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout ([C] 0.05)"})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(PAPER_LORA_MODULES),
        metadata={"help": "projections of the LM's decoder layers that get LoRA ([P] q_proj, v_proj); choices "
                          f"{list(LM_LORA_MODULE_CHOICES)}. Only the LM's layers are matched, never the encoders'"},
    )
    train_projector: bool = field(default=True, metadata={"help": "train the projector in full (modules_to_save)"})
    train_vision_towers: bool = field(
        default=False,
        metadata={"help": "DEMO-ONLY: also train the vision encoders (the paper freezes them); they are then saved "
                          "in the adapter (modules_to_save)"},
    )
    projector_learning_rate: float | None = field(
        default=None,
        metadata={"help": "learning rate of the projector (LLaVA's mm_projector_lr); default: SFTConfig's learning_rate"},
    )
    vision_tower_learning_rate: float | None = field(
        default=None, metadata={"help": "learning rate of the vision encoders when train_vision_towers is on"}
    )
    loss_normalization: str = field(
        default="batch",
        metadata={"help": "divisor of a batch's summed token loss: 'batch' = its own answer-token count (TRL/transformers "
                          "default), 'dataset' = its rows x the mean answer tokens per training row (every token "
                          "weighs the same over the dataset; see litegpt_train.trainer.mean_loss_tokens_per_row)"},
    )
    lr_schedule: str = field(
        default=TRAINER_SCHEDULE,
        metadata={"help": f"learning-rate schedule, one of {LR_SCHEDULES}: 'trainer' = SFTConfig's lr_scheduler_type, "
                          "warmup_steps and lr_scheduler_kwargs; 'paper' = MiniGPT-v2's warm-up + cosine with the paper's "
                          "values (warm-up lr = minimum lr = learning_rate: a constant learning_rate); 'released_code' = "
                          "the same scheduler with the released code's values (warm-up from learning_rate / 10 over "
                          "warmup_steps, cosine over all steps down to learning_rate / 10); see litegpt_train.schedule"},
    )
    projector_alignment_steps: int = field(
        default=0,
        metadata={"help": "first optimizer steps of a stage that starts from a fresh projector (no init_from) in which "
                          "only the projector learns (LoRA learning rate held at 0), like LLaVA's feature-alignment "
                          "stage; the paper's projector starts aligned from MiniGPT-v2, so 0 (off) there"},
    )
    cache_projector_inputs: bool = field(
        default=False, metadata={"help": "compute the frozen encoders' output once per image and reuse it every epoch/stage"}
    )
    stage_overrides: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "per-stage SFTConfig overrides, e.g. {\"diagnosis\": {\"num_train_epochs\": 10}}"},
    )
    hub_base_model_id: str | None = field(
        default=None,
        metadata={"help": "Hub id of the base recorded in pushed adapters (base_model_name_or_path); needed when the "
                          "base was loaded from a local folder"},
    )
    overwrite_stages: bool = field(
        default=False, metadata={"help": "retrain stages whose output folder already holds a finished adapter"}
    )
    eval_after_training: bool = field(default=False, metadata={"help": "run eval.py on each finished stage"})
    eval_split: str = field(default="test", metadata={"help": "split eval_after_training scores"})
    eval_batch_size: int = field(default=8, metadata={"help": "generation batch size of eval_after_training"})
    eval_dtype: str = field(
        default="auto",
        metadata={"help": "dtype eval_after_training loads the model in (eval.py --dtype: auto, float32, bfloat16, "
                  "float16); bfloat16 roughly halves CPU generation time on CPUs with native bf16"},
    )
    eval_bootstrap: int = field(default=1000, metadata={"help": "bootstrap resamples of eval_after_training"})
    eval_baselines: bool = field(default=True, metadata={"help": "score the trivial baselines beside the model"})
    eval_label_scores: bool = field(
        default=True,
        metadata={"help": "teacher-forced label probabilities for the label AUCs (about 2.5x the generation time of "
                  "grounding answers; eval.py --no_label_scores when false)"},
    )
    eval_label_score_stages: list[str] | None = field(
        default=None,
        metadata={"help": "stages whose eval computes the label probabilities when eval_label_scores is on (default: "
                  "every stage); e.g. [grounding] keeps stage 1's local-label AUCs and skips stage 2's"},
    )
    eval_coco_meteor: bool = field(
        default=True,
        metadata={"help": "the Java METEOR 1.5 variant of the text metrics (about 10 s per scored answer set, for the "
                  "model and each baseline; eval.py --no_coco_meteor when false)"},
    )

    def __post_init__(self):
        for name in ("dataset_settings", "mimic_settings", "mix", "stage_overrides", "synthetic_settings"):
            setattr(self, name, _as_dict(name, getattr(self, name)))
        if self.init_from in ("", INIT_NONE):
            self.init_from = None

    @property
    def stage_list(self) -> list[str]:
        return [self.stage] if self.stage else list(self.stages)


def _as_dict(name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"--{name} must be a JSON object, got {value!r}: {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a mapping, got {type(value).__name__}")
    return dict(value)


def check_arguments(script_args: LiteGPTScriptArguments, sft_fields: set[str]) -> None:
    """Raise `ValueError` naming the first problem of the run's configuration (nothing loaded yet)."""
    if not script_args.model_name_or_path:
        raise ValueError("model_name_or_path is required: a LiteGPT base folder or Hub id")
    stages = script_args.stage_list
    if not stages:
        raise ValueError("no stage to train: set `stages` or `--stage`")
    for stage in stages + [t for tasks in script_args.mix.values() for t in _task_list(tasks)]:
        if stage not in STAGE_SOURCES:
            raise ValueError(f"unknown stage/task {stage!r}; choices: {sorted(STAGE_SOURCES)}")
    if len(set(stages)) != len(stages):
        raise ValueError(f"a stage appears twice in {stages}")
    for stage in script_args.mix:
        if stage not in stages:
            raise ValueError(f"`mix` names stage {stage!r}, which is not trained in this run ({stages})")
    for stage, overrides in script_args.stage_overrides.items():
        if stage not in STAGE_SOURCES:
            raise ValueError(f"stage_overrides: unknown stage {stage!r}; choices: {sorted(STAGE_SOURCES)}")
        if not isinstance(overrides, dict):
            raise ValueError(f"stage_overrides[{stage!r}] must be a mapping of SFTConfig fields")
        unknown = sorted(set(overrides) - sft_fields)
        if unknown:
            raise ValueError(f"stage_overrides[{stage!r}]: {unknown} are not SFTConfig fields")
        if "output_dir" in overrides:
            raise ValueError("stage_overrides cannot move output_dir: stage outputs are <output_dir>/<stage>")
    if script_args.quantization not in QUANTIZATION_CHOICES:
        raise ValueError(f"quantization must be one of {QUANTIZATION_CHOICES}, got {script_args.quantization!r}")
    unknown_modules = sorted(set(script_args.lora_target_modules) - set(LM_LORA_MODULE_CHOICES))
    if unknown_modules or not script_args.lora_target_modules:
        raise ValueError(
            f"lora_target_modules must be a non-empty subset of {list(LM_LORA_MODULE_CHOICES)}, got "
            f"{script_args.lora_target_modules!r}"
        )
    if script_args.loss_normalization not in LOSS_NORMALIZATIONS:
        raise ValueError(f"loss_normalization must be one of {LOSS_NORMALIZATIONS}, got {script_args.loss_normalization!r}")
    for name in ("projector_learning_rate", "vision_tower_learning_rate"):
        value = getattr(script_args, name)
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    if script_args.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {script_args.lr_schedule!r}")
    for stage in script_args.eval_label_score_stages or []:
        if stage not in stages:
            raise ValueError(f"eval_label_score_stages names stage {stage!r}, which is not trained in this run ({stages})")
    if script_args.eval_dtype not in EVAL_DTYPES:
        raise ValueError(f"eval_dtype must be one of {EVAL_DTYPES}, got {script_args.eval_dtype!r}")
    if script_args.encoder_warmup_epochs < 0:
        raise ValueError(f"encoder_warmup_epochs must be >= 0, got {script_args.encoder_warmup_epochs}")
    if script_args.encoder_warmup_epochs and not script_args.base_preset:
        raise ValueError(
            "encoder_warmup_epochs warms up the random encoders of a base this script builds (base_preset); it never "
            "changes an existing base"
        )
    if script_args.encoder_warmup_epochs and not script_args.encoder_warmup_learning_rate > 0:
        raise ValueError(f"encoder_warmup_learning_rate must be > 0, got {script_args.encoder_warmup_learning_rate}")
    if script_args.projector_alignment_steps < 0:
        raise ValueError(f"projector_alignment_steps must be >= 0, got {script_args.projector_alignment_steps}")
    if script_args.projector_alignment_steps and not script_args.train_projector:
        raise ValueError("projector_alignment_steps trains the projector alone, but train_projector is off")
    if script_args.projector_alignment_steps and script_args.init_from:
        raise ValueError(
            "projector_alignment_steps applies to a stage that starts from a fresh projector; init_from "
            f"{script_args.init_from} brings a trained one"
        )
    if script_args.projector_learning_rate is not None and not script_args.train_projector:
        raise ValueError("projector_learning_rate is set but train_projector is off")
    if script_args.vision_tower_learning_rate is not None and not script_args.train_vision_towers:
        raise ValueError("vision_tower_learning_rate is set but train_vision_towers is off")
    if script_args.cache_projector_inputs and script_args.train_vision_towers:
        raise ValueError("cache_projector_inputs needs frozen encoders: it cannot be combined with train_vision_towers")
    families = {STAGE_SOURCES[t][0] for s in stages for t in [s, *_task_list(script_args.mix.get(s, []))]}
    if "vindr_cxr" in families and not script_args.data_dir:
        raise ValueError("the VinDr-CXR stages need data_dir (the vindr-cxr/1.0.0 folder)")
    if "mimic_cxr" in families and not script_args.mimic_data_dir:
        raise ValueError("the MIMIC-CXR stages need mimic_data_dir")
    for name in ("data_dir", "mimic_data_dir"):
        path = getattr(script_args, name)
        if path and not Path(path).exists() and not script_args.synthetic_data:
            raise FileNotFoundError(f"{name} {path} does not exist")
    if script_args.init_from:
        resolve_adapter_config(script_args.init_from, what="init_from")
    base = script_args.model_name_or_path
    if not looks_like_hub_id(base) and not Path(base).exists() and not script_args.base_preset:
        raise FileNotFoundError(f"model_name_or_path {base} does not exist (set base_preset to build the demo base)")


def check_lr_schedule(script_args: LiteGPTScriptArguments, training_args: Any) -> None:
    """A MiniGPT-v2 `lr_schedule` replaces SFTConfig's scheduler: setting both is an error, not a silent choice."""
    if script_args.lr_schedule == TRAINER_SCHEDULE:
        return
    default_type = type(training_args).__dataclass_fields__["lr_scheduler_type"].default
    settings = [("the run", {"lr_scheduler_type": training_args.lr_scheduler_type,
                             "lr_scheduler_kwargs": training_args.lr_scheduler_kwargs})]  # fmt: skip
    settings += [(f"stage_overrides[{stage!r}]", overrides) for stage, overrides in script_args.stage_overrides.items()]
    for where, values in settings:
        scheduler_type = values.get("lr_scheduler_type")
        if scheduler_type is not None and str(getattr(scheduler_type, "value", scheduler_type)) != str(default_type):
            raise ValueError(
                f"lr_schedule {script_args.lr_schedule!r} sets the learning-rate schedule, but {where} also sets "
                f"lr_scheduler_type {getattr(scheduler_type, 'value', scheduler_type)!r}: remove one (lr_schedule: "
                f"{TRAINER_SCHEDULE} uses lr_scheduler_type; the MiniGPT-v2 schedules are {sorted(MINIGPTV2_SCHEDULES)})"
            )
        if values.get("lr_scheduler_kwargs"):
            raise ValueError(f"lr_schedule {script_args.lr_schedule!r} takes no lr_scheduler_kwargs ({where} sets "
                             f"{values['lr_scheduler_kwargs']})")  # fmt: skip


def resolve_adapter_config(adapter: str, what: str = "adapter", revision: str | None = None) -> dict[str, Any]:
    """The `adapter_config.json` of a local adapter folder or Hub adapter, or a clear error."""
    path = Path(adapter)
    if (path / "adapter_config.json").is_file():
        return json.loads((path / "adapter_config.json").read_text())
    if path.exists():
        raise FileNotFoundError(f"{what} {adapter}: no adapter_config.json there (a PEFT adapter folder is expected)")
    if not looks_like_hub_id(adapter):
        raise FileNotFoundError(f"{what} {adapter} does not exist")
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(adapter, "adapter_config.json", revision=revision)).read_text())
    except Exception as err:  # offline, missing repo, no access: all mean "cannot start from it"
        raise FileNotFoundError(
            f"{what} {adapter}: not a local folder, and its adapter_config.json could not be fetched from the Hub "
            f"({type(err).__name__}: {err})"
        ) from None


def _task_list(tasks: Any) -> list[str]:
    return [tasks] if isinstance(tasks, str) else list(tasks)


def looks_like_hub_id(name: str) -> bool:
    """`owner/name` that is not an existing path: a Hub repository id."""
    return name.count("/") == 1 and not Path(name).exists() and not name.startswith((".", "/", "~"))


def sft_config_fields(sft_config_cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(sft_config_cls)}


__all__ = [
    "INIT_NONE",
    "LM_LORA_MODULE_CHOICES",
    "PAPER_LORA_MODULES",
    "QUANTIZATION_CHOICES",
    "STAGE_SOURCES",
    "LiteGPTScriptArguments",
    "check_arguments",
    "check_lr_schedule",
    "looks_like_hub_id",
    "resolve_adapter_config",
    "sft_config_fields",
]
