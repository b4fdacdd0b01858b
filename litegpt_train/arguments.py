"""Arguments of `train_sft.py`, in groups, and their checks.

One YAML (`--config`) holds them all; `TrlParser` fills one dataclass per group, command-line flags override the
YAML, an unknown key is an error:

* `LiteGPTModelConfig` - TRL's `ModelConfig` with LiteGPT's defaults: the base (`model_name_or_path`,
  `model_revision`, `dtype`, `attn_implementation`), its quantisation (`load_in_8bit`, `load_in_4bit`, ...) and LoRA
  (`lora_r`, `lora_alpha`, `lora_dropout`, `lora_target_modules`, `use_rslora`, `use_dora`), plus the demo's
  `base_preset` and the Hub id of the base (`hub_base_model_id`);
* `StageArguments` - which stages, from which adapter, per-stage `SFTConfig` overrides, retraining;
* `DataArguments` - the datasets of the stages (builders and their settings, mixing, the demo's synthetic data);
* `OptimisationArguments` - what trains at which learning rate, the loss normalisation, the schedule, the cache;
* `EvalAfterTrainingArguments` - the evaluation of each finished stage;
* TRL's `SFTConfig` - everything else (optimiser, batch, precision, logging, saving, Hub).

`RunArguments` holds the six. Every check here runs before any model is loaded or any step is trained: a wrong
config fails in seconds.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import ModelConfig

from .schedule import LR_SCHEDULES, MINIGPTV2_SCHEDULES, TRAINER_SCHEDULE

# Stage name -> (dataset family, builder config). VinDr stages are the paper's; MIMIC ones are extra.
STAGE_SOURCES: dict[str, tuple[str, str]] = {
    "grounding": ("vindr_cxr", "grounding"),
    "diagnosis": ("vindr_cxr", "diagnosis"),
    "report": ("mimic_cxr", "report"),
    "existence": ("mimic_cxr", "existence"),
}
LOSS_NORMALIZATIONS = ("batch", "dataset")  # see litegpt_train.trainer.mean_loss_tokens_per_row
PAPER_LORA_MODULES = ("q_proj", "v_proj")
LM_LORA_MODULE_CHOICES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
INIT_NONE = "none"
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
# ModelConfig fields LiteGPT does not use, with the value that means "not set": any other value is an error.
UNSUPPORTED_MODEL_CONFIG = {
    "use_peft": True,
    "lora_target_parameters": None,
    "lora_modules_to_save": None,
    "lora_task_type": "CAUSAL_LM",
    "bnb_4bit_quant_storage": None,
}
UNSUPPORTED_REASONS = {
    "use_peft": "LiteGPT always trains LoRA on the language model (and the projector in full)",
    "lora_target_parameters": "LoRA targets the language model's projections (lora_target_modules)",
    "lora_modules_to_save": "what trains in full is set by train_projector / train_vision_towers",
    "lora_task_type": "LiteGPT is a causal language model (CAUSAL_LM)",
    "bnb_4bit_quant_storage": "4-bit weights use bitsandbytes' default storage",
}


@dataclass
class LiteGPTModelConfig(ModelConfig):
    """TRL's `ModelConfig` with LiteGPT's defaults (the paper's LoRA: r 64 on q/v, alpha 16, dropout 0.05; 4-bit as
    nf4 with double quantisation), the demo's `base_preset` and the Hub id of the base."""

    model_revision: str | None = field(default=None, metadata={"help": "Hub revision of the base (pin it with remote code)"})
    dtype: str = field(
        default="float32",
        metadata={"help": f"dtype the weights load in, one of {DTYPE_CHOICES}; mixed precision is SFTConfig's bf16/fp16"},
    )
    use_peft: bool = field(default=True, metadata={"help": "always true: LiteGPT trains LoRA"})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank on the LM's q/v ([P] 64)"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha ([C] 16)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout ([C] 0.05)"})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(PAPER_LORA_MODULES),
        metadata={"help": "projections of the LM's decoder layers that get LoRA ([P] q_proj, v_proj); choices "
                          f"{list(LM_LORA_MODULE_CHOICES)}. Only the LM's layers are matched, never the encoders'"},
    )
    use_bnb_nested_quant: bool = field(
        default=True, metadata={"help": "double quantisation of 4-bit weights ([C]'s 4-bit option)"}
    )
    base_preset: str | None = field(
        default=None,
        metadata={"help": "offline demo: if model_name_or_path does not exist, build it from this LiteGPTConfig preset "
                          "with the SmolLM2 GGUF LM (litegpt_train.base.build_base_checkpoint)"},
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
    hub_base_model_id: str | None = field(
        default=None,
        metadata={"help": "Hub id of the base recorded in pushed adapters (base_model_name_or_path); needed when the "
                          "base was loaded from a local folder"},
    )

    def __post_init__(self):
        super().__post_init__()
        # ModelConfig turns a one-element list into a string; LiteGPT keeps the list of projection names.
        if isinstance(self.lora_target_modules, str):
            self.lora_target_modules = [self.lora_target_modules]
        if not self.model_name_or_path:
            raise ValueError("model_name_or_path is required: a LiteGPT base folder or Hub id")
        if self.dtype not in DTYPE_CHOICES:
            raise ValueError(f"dtype must be one of {DTYPE_CHOICES}, got {self.dtype!r}")
        unknown_modules = sorted(set(self.lora_target_modules or ()) - set(LM_LORA_MODULE_CHOICES))
        if unknown_modules or not self.lora_target_modules:
            raise ValueError(
                f"lora_target_modules must be a non-empty subset of {list(LM_LORA_MODULE_CHOICES)}, got "
                f"{self.lora_target_modules!r}"
            )
        for name, unset in UNSUPPORTED_MODEL_CONFIG.items():
            if getattr(self, name) != unset:
                raise ValueError(f"{name}={getattr(self, name)!r} is not supported: {UNSUPPORTED_REASONS[name]}")
        if self.encoder_warmup_epochs < 0:
            raise ValueError(f"encoder_warmup_epochs must be >= 0, got {self.encoder_warmup_epochs}")
        if self.encoder_warmup_epochs and not self.base_preset:
            raise ValueError(
                "encoder_warmup_epochs warms up the random encoders of a base this script builds (base_preset); it "
                "never changes an existing base"
            )
        if self.encoder_warmup_epochs and not self.encoder_warmup_learning_rate > 0:
            raise ValueError(f"encoder_warmup_learning_rate must be > 0, got {self.encoder_warmup_learning_rate}")

    @property
    def quantization_bits(self) -> int | None:
        """8 or 4 when the language model loads quantised, else None."""
        return 8 if self.load_in_8bit else 4 if self.load_in_4bit else None


@dataclass
class StageArguments:
    """Which stages train, in which order, from which adapter."""

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
    stage_overrides: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "per-stage SFTConfig overrides, e.g. {\"diagnosis\": {\"num_train_epochs\": 10}}"},
    )
    overwrite_stages: bool = field(
        default=False, metadata={"help": "retrain stages whose output folder already holds a finished adapter"}
    )

    def __post_init__(self):
        self.stage_overrides = _as_dict("stage_overrides", self.stage_overrides)
        if self.init_from in ("", INIT_NONE):
            self.init_from = None
        stages = self.stage_list
        if not stages:
            raise ValueError("no stage to train: set `stages` or `--stage`")
        for stage in stages:
            _check_stage(stage)
        if len(set(stages)) != len(stages):
            raise ValueError(f"a stage appears twice in {stages}")
        for stage, overrides in self.stage_overrides.items():
            if stage not in STAGE_SOURCES:
                raise ValueError(f"stage_overrides: unknown stage {stage!r}; choices: {sorted(STAGE_SOURCES)}")
            if not isinstance(overrides, dict):
                # a configuration error like every other here (what TrlParser reports), not a TypeError
                raise ValueError(f"stage_overrides[{stage!r}] must be a mapping of SFTConfig fields")  # noqa: TRY004
            if "output_dir" in overrides:
                raise ValueError("stage_overrides cannot move output_dir: stage outputs are <output_dir>/<stage>")

    @property
    def stage_list(self) -> list[str]:
        return [self.stage] if self.stage else list(self.stages)


@dataclass
class DataArguments:
    """The datasets of the stages: the builders' folders and settings, mixing, and the demo's synthetic sample."""

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

    def __post_init__(self):
        for name in ("dataset_settings", "mimic_settings", "mix", "synthetic_settings"):
            setattr(self, name, _as_dict(name, getattr(self, name)))
        for tasks in self.mix.values():
            for task in _task_list(tasks):
                _check_stage(task)

    def source(self, family: str) -> tuple[str | None, dict[str, Any]]:
        """`(data folder, builder settings)` of a dataset family (`vindr_cxr` or `mimic_cxr`)."""
        if family == "vindr_cxr":
            return self.data_dir, self.dataset_settings
        return self.mimic_data_dir, self.mimic_settings

    def tasks_of(self, stage: str) -> list[str]:
        """The stage's own task and the tasks `mix` adds to it."""
        return [stage, *_task_list(self.mix.get(stage, []))]


@dataclass
class OptimisationArguments:
    """What trains, at which learning rate, with which loss normalisation and schedule."""

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

    def __post_init__(self):
        if self.loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(f"loss_normalization must be one of {LOSS_NORMALIZATIONS}, got {self.loss_normalization!r}")
        for name in ("projector_learning_rate", "vision_tower_learning_rate"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.projector_alignment_steps < 0:
            raise ValueError(f"projector_alignment_steps must be >= 0, got {self.projector_alignment_steps}")
        if self.projector_alignment_steps and not self.train_projector:
            raise ValueError("projector_alignment_steps trains the projector alone, but train_projector is off")
        if self.projector_learning_rate is not None and not self.train_projector:
            raise ValueError("projector_learning_rate is set but train_projector is off")
        if self.vision_tower_learning_rate is not None and not self.train_vision_towers:
            raise ValueError("vision_tower_learning_rate is set but train_vision_towers is off")
        if self.cache_projector_inputs and self.train_vision_towers:
            raise ValueError("cache_projector_inputs needs frozen encoders: it cannot be combined with train_vision_towers")


@dataclass
class EvalAfterTrainingArguments:
    """The evaluation of each finished stage (`litegpt_eval.evaluate` on the stage's own task, into `<stage>/eval`)."""

    eval_after_training: bool = field(default=False, metadata={"help": "evaluate each finished stage"})
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
        if self.eval_dtype not in DTYPE_CHOICES:
            raise ValueError(f"eval_dtype must be one of {DTYPE_CHOICES}, got {self.eval_dtype!r}")

    def wants_label_scores(self, stage: str) -> bool:
        """Whether `stage`'s eval computes the teacher-forced label probabilities (`eval_label_scores`, restricted to
        `eval_label_score_stages` when that is set)."""
        chosen = self.eval_label_score_stages
        return bool(self.eval_label_scores) and (chosen is None or stage in chosen)


ARGUMENT_GROUPS = (LiteGPTModelConfig, StageArguments, DataArguments, OptimisationArguments, EvalAfterTrainingArguments)
OWN_GROUPS = ("model", "stages", "data", "optimisation", "evaluation")


@dataclass
class RunArguments:
    """Everything a `train_sft.py` run is given, by group (`sft` is TRL's `SFTConfig`)."""

    model: LiteGPTModelConfig
    stages: StageArguments
    data: DataArguments
    optimisation: OptimisationArguments
    evaluation: EvalAfterTrainingArguments
    sft: Any

    def record(self) -> dict[str, dict[str, Any]]:
        """Our groups as JSON-ready dicts, by group name (the training record and the model card add the stage's
        `SFTConfig`)."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in OWN_GROUPS}


def check_run(run: RunArguments) -> None:
    """Raise `ValueError` / `FileNotFoundError` naming the first problem that spans groups (nothing loaded yet); each
    group checked itself when it was built."""
    stages, data, opt, model = run.stages, run.data, run.optimisation, run.model
    for stage in data.mix:
        if stage not in stages.stage_list:
            raise ValueError(f"`mix` names stage {stage!r}, which is not trained in this run ({stages.stage_list})")
    sft_fields = {f.name for f in dataclasses.fields(type(run.sft))}
    for stage, overrides in stages.stage_overrides.items():
        unknown = sorted(set(overrides) - sft_fields)
        if unknown:
            raise ValueError(f"stage_overrides[{stage!r}]: {unknown} are not SFTConfig fields")
    for stage in run.evaluation.eval_label_score_stages or []:
        if stage not in stages.stage_list:
            raise ValueError(
                f"eval_label_score_stages names stage {stage!r}, which is not trained in this run ({stages.stage_list})"
            )
    if opt.projector_alignment_steps and stages.init_from:
        raise ValueError(
            "projector_alignment_steps applies to a stage that starts from a fresh projector; init_from "
            f"{stages.init_from} brings a trained one"
        )
    families = {STAGE_SOURCES[task][0] for stage in stages.stage_list for task in data.tasks_of(stage)}
    if "vindr_cxr" in families and not data.data_dir:
        raise ValueError("the VinDr-CXR stages need data_dir (the vindr-cxr/1.0.0 folder)")
    if "mimic_cxr" in families and not data.mimic_data_dir:
        raise ValueError("the MIMIC-CXR stages need mimic_data_dir")
    for name in ("data_dir", "mimic_data_dir"):
        path = getattr(data, name)
        if path and not Path(path).exists() and not data.synthetic_data:
            raise FileNotFoundError(f"{name} {path} does not exist")
    if stages.init_from:
        resolve_adapter_config(stages.init_from, what="init_from")
    base = model.model_name_or_path
    if not looks_like_hub_id(base) and not Path(base).exists() and not model.base_preset:
        raise FileNotFoundError(f"model_name_or_path {base} does not exist (set base_preset to build the demo base)")
    check_lr_schedule(opt, stages, run.sft)


def check_lr_schedule(opt: OptimisationArguments, stages: StageArguments, training_args: Any) -> None:
    """A MiniGPT-v2 `lr_schedule` replaces SFTConfig's scheduler: setting both is an error, not a silent choice."""
    if opt.lr_schedule == TRAINER_SCHEDULE:
        return
    default_type = type(training_args).__dataclass_fields__["lr_scheduler_type"].default
    settings = [("the run", {"lr_scheduler_type": training_args.lr_scheduler_type,
                             "lr_scheduler_kwargs": training_args.lr_scheduler_kwargs})]  # fmt: skip
    settings += [(f"stage_overrides[{stage!r}]", overrides) for stage, overrides in stages.stage_overrides.items()]
    for where, values in settings:
        scheduler_type = values.get("lr_scheduler_type")
        if scheduler_type is not None and str(getattr(scheduler_type, "value", scheduler_type)) != str(default_type):
            raise ValueError(
                f"lr_schedule {opt.lr_schedule!r} sets the learning-rate schedule, but {where} also sets "
                f"lr_scheduler_type {getattr(scheduler_type, 'value', scheduler_type)!r}: remove one (lr_schedule: "
                f"{TRAINER_SCHEDULE} uses lr_scheduler_type; the MiniGPT-v2 schedules are {sorted(MINIGPTV2_SCHEDULES)})"
            )
        if values.get("lr_scheduler_kwargs"):
            raise ValueError(f"lr_schedule {opt.lr_schedule!r} takes no lr_scheduler_kwargs ({where} sets "
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
    except Exception as err:  # noqa: BLE001 - offline, missing repo, no access: all mean "cannot start from it"
        raise FileNotFoundError(
            f"{what} {adapter}: not a local folder, and its adapter_config.json could not be fetched from the Hub "
            f"({type(err).__name__}: {err})"
        ) from None


def _as_dict(name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"--{name} must be a JSON object, got {value!r}: {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a mapping, got {type(value).__name__}")  # noqa: TRY004 (a config error)
    return dict(value)


def _check_stage(stage: str) -> None:
    if stage not in STAGE_SOURCES:
        raise ValueError(f"unknown stage/task {stage!r}; choices: {sorted(STAGE_SOURCES)}")


def _task_list(tasks: Any) -> list[str]:
    return [tasks] if isinstance(tasks, str) else list(tasks)


def looks_like_hub_id(name: str) -> bool:
    """`owner/name` that is not an existing path: a Hub repository id."""
    return name.count("/") == 1 and not Path(name).exists() and not name.startswith((".", "/", "~"))


__all__ = [
    "ARGUMENT_GROUPS",
    "INIT_NONE",
    "LM_LORA_MODULE_CHOICES",
    "PAPER_LORA_MODULES",
    "STAGE_SOURCES",
    "DataArguments",
    "EvalAfterTrainingArguments",
    "LiteGPTModelConfig",
    "OptimisationArguments",
    "RunArguments",
    "StageArguments",
    "check_lr_schedule",
    "check_run",
    "looks_like_hub_id",
    "resolve_adapter_config",
]
