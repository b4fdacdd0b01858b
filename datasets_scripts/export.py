"""Export and command line of the dataset builders (`vindr_cxr.py`, `mimic_cxr.py`).

* `export_parquet(dataset_dict_by_config, out_dir, card_title, settings, counts)` - local Parquet export
  (`out_dir/{config}/{split}-00000-of-00001.parquet`) plus a dataset card whose YAML `configs:` lets
  `load_dataset(out_dir_or_repo, config)` work script-free (datasets >= 4 refuses loading scripts);
* `push_to_hub(export_dir, repo_id, private=True)` - uploads an export folder to a *private* dataset repo;
* `run_builder_cli(builder_cls, description, argv=None)` - the command line of every builder.

Builder protocol read by `run_builder_cli` (all optional, duck-typed):

* `builder.settings -> dict`: the settings written into the card (default: the builder config's dataclass fields
  other than `name`, `version`, `data_dir`, `data_files`, `description`);
* `builder.counts -> dict`: preprocessing counts (default: none);
* `builder.skipped -> dict`: a `SkipLog.summary()` (default: empty).

Both datasets are credentialed (PhysioNet): nothing here uploads or copies data unless the user asks for it, and
`push_to_hub` refuses public repositories.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from datasets_scripts.common import SkipLog

logger = logging.getLogger(__name__)

CREDENTIAL_WARNING = (
    "This dataset is derived from credentialed-access data distributed by PhysioNet. Its data use agreement "
    "forbids redistribution: keep every copy (local or on the Hub) private, share it only with people who hold "
    "their own credentialed access to the source dataset and have signed its data use agreement, and cite the "
    "source as its licence requires. The images and texts here are derived works and fall under the same terms."
)


_NON_SETTING_FIELDS = ("name", "version", "data_dir", "data_files", "description")


def _summary_total(summary: Mapping[str, Any] | None) -> int:
    return len((summary or {}).get(SkipLog.ITEMS_KEY, []))


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    text = str(size).strip().upper()
    for unit, factor in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10), ("B", 1)):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def _write_split(dataset, directory: Path, split: str, max_shard_bytes: int) -> list[str]:
    """Write one split as `{split}-{i:05d}-of-{n:05d}.parquet` (one shard unless larger than `max_shard_bytes`)."""
    nbytes = int(getattr(dataset, "data", None).nbytes) if getattr(dataset, "data", None) is not None else 0
    num_shards = max(1, min(len(dataset), math.ceil(nbytes / max_shard_bytes))) if len(dataset) else 1
    names = []
    for index in range(num_shards):
        shard = dataset if num_shards == 1 else dataset.shard(num_shards=num_shards, index=index, contiguous=True)
        name = f"{split}-{index:05d}-of-{num_shards:05d}.parquet"
        shard.to_parquet(str(directory / name))
        names.append(name)
    return names


def _json_block(data: Any) -> str:
    return "```json\n" + json.dumps(data, indent=1, sort_keys=False, default=str) + "\n```"


def _render_skipped(skipped: Mapping[str, Any] | None, max_items: int = 50) -> str:
    """Markdown for a summary or a `{config: summary}` mapping."""
    if not skipped:
        return "Nothing was skipped.\n"
    groups = {"": skipped} if SkipLog.ITEMS_KEY in skipped else dict(skipped)
    lines = []
    for group, summary in groups.items():
        summary = summary or {}
        items = summary.get(SkipLog.ITEMS_KEY, [])
        counts = {k: v for k, v in summary.items() if k != SkipLog.ITEMS_KEY}
        title = f"**{group}**: " if group else ""
        if not items:
            lines.append(f"- {title}nothing skipped")
            continue
        lines.append(f"- {title}{len(items)} skipped: " + ", ".join(f"{k} = {v}" for k, v in counts.items()))
        for entry in items[:max_items]:
            lines.append(f"  - `{entry['item']}`: {entry['reason']}")
        if len(items) > max_items:
            lines.append(f"  - ... {len(items) - max_items} more in `skipped.json`")
    return "\n".join(lines) + "\n"


def export_parquet(
    dataset_dict_by_config: Mapping[str, Any],
    out_dir: str | os.PathLike,
    card_title: str,
    settings: Mapping[str, Any],
    counts: Mapping[str, Any],
    skipped: Mapping[str, Any] | None = None,
    max_shard_size: int | str = "500MB",
) -> Path:
    """Export `{config: DatasetDict}` as Parquet plus a dataset card; returns `out_dir`.

    Layout: `out_dir/{config}/{split}-00000-of-00001.parquet` (more shards only for splits above `max_shard_size`),
    `out_dir/README.md` (YAML front matter with `configs:` -> `config_name` + `data_files` per split, then the card:
    settings, counts, skipped summary, the credential/licence warning) and `out_dir/skipped.json`. `skipped` is a
    `SkipLog.summary()` or `{config: summary}`; when omitted, `counts["skipped"]` is used if present.
    Afterwards `load_dataset(str(out_dir), config)` (or the Hub repo after `push_to_hub`) works without scripts.
    Existing files of the exported configs are replaced; nothing is uploaded.
    """
    import yaml

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    max_shard_bytes = _parse_size(max_shard_size)
    if skipped is None and isinstance(counts, Mapping):
        skipped = counts.get("skipped")

    yaml_configs = []
    written: dict[str, dict[str, list[str]]] = {}
    for config_name, dataset_dict in dataset_dict_by_config.items():
        config_dir = out / config_name
        if config_dir.exists():
            shutil.rmtree(config_dir)
        config_dir.mkdir(parents=True)
        data_files = []
        written[config_name] = {}
        for split, dataset in dataset_dict.items():
            names = _write_split(dataset, config_dir, str(split), max_shard_bytes)
            written[config_name][str(split)] = names
            data_files.append({"split": str(split), "path": f"{config_name}/{split}-*.parquet"})
        yaml_configs.append({"config_name": config_name, "data_files": data_files})

    front = {
        "pretty_name": card_title,
        "license": "other",
        "tags": ["medical", "chest-x-ray", "credentialed-access"],
        "configs": yaml_configs,
    }
    rows = {
        config: {str(split): len(ds) for split, ds in dataset_dict.items()}
        for config, dataset_dict in dataset_dict_by_config.items()
    }
    body = [
        f"# {card_title}",
        "",
        "> **Credentialed data - do not redistribute.** " + CREDENTIAL_WARNING,
        "",
        (
            "Built locally from the user's own copy of the source data with the `datasets_scripts` builders of "
            "LiteGPT-CXR. Load a subset with `datasets.load_dataset(<this folder or private repo>, <config>)`."
        ),
        "",
        "## Subsets and rows",
        "",
        "| config | split | rows |",
        "|---|---|---|",
    ]
    for config, splits in rows.items():
        for split, n in splits.items():
            body.append(f"| {config} | {split} | {n} |")
    body += [
        "",
        "## Settings",
        "",
        _json_block(dict(settings)),
        "",
        "## Counts",
        "",
        _json_block({k: v for k, v in dict(counts).items() if k != "skipped"}),
        "",
        "## Skipped",
        "",
        _render_skipped(skipped),
        "",
        "## Licence",
        "",
        CREDENTIAL_WARNING,
        "",
    ]
    card = "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n\n" + "\n".join(body)
    (out / "README.md").write_text(card, encoding="utf-8")
    with open(out / "skipped.json", "w", encoding="utf-8") as handle:
        json.dump(skipped or {}, handle, indent=1)
        handle.write("\n")
    logger.info("exported %s to %s", {c: list(s) for c, s in written.items()}, out)
    return out


def push_to_hub(export_dir: str | os.PathLike, repo_id: str, private: bool = True) -> str:
    """Upload an `export_parquet` folder to a **private** Hub dataset repo (`huggingface_hub.upload_folder`).

    Refuses `private=False` and existing public repos: the source datasets are credentialed and may not be
    redistributed. Returns the repo URL. Never called by the tests.
    """
    if not private:
        raise ValueError(
            "refusing to push credentialed data to a public repository (PhysioNet data use agreement); use private=True"
        )
    export_dir = Path(export_dir)
    if not (export_dir / "README.md").is_file():
        raise FileNotFoundError(f"{export_dir} is not an export folder (no README.md); run export_parquet first")
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo_id, repo_type="dataset", private=True, exist_ok=True)
    info = api.repo_info(repo_id, repo_type="dataset")
    if not getattr(info, "private", False):
        raise RuntimeError(f"dataset repo {repo_id} exists and is public; refusing to upload credentialed data")
    api.upload_folder(
        folder_path=str(export_dir),
        repo_id=repo_id,
        repo_type="dataset",
        commit_message="Upload dataset built with LiteGPT-CXR datasets_scripts",
    )
    return str(url)


def _config_fields(builder_cls) -> dict[str, dataclasses.Field]:
    config_cls = getattr(builder_cls, "BUILDER_CONFIG_CLASS", None)
    if config_cls is None or not dataclasses.is_dataclass(config_cls):
        return {}
    return {f.name: f for f in dataclasses.fields(config_cls) if f.name not in _NON_SETTING_FIELDS}


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return None


_TRUE = {"1", "true", "yes", "on"}


_FALSE = {"0", "false", "no", "off"}


def _annotation_kind(field: dataclasses.Field | None) -> type | None:
    """bool/int/float/tuple/list named in a field's annotation (a string under `from __future__ import annotations`)."""
    if field is None:
        return None
    annotation = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    tokens = set(annotation.replace("|", " ").replace("[", " ").replace("]", " ").replace(",", " ").split())
    for kind in (bool, int, float, tuple, list):
        if kind.__name__ in tokens or kind.__name__.capitalize() in tokens:
            return kind
    return None


def _coerce_setting(key: str, text: str, default: Any, kind: type | None = None) -> Any:
    """Parse `--set key=value` by the type of the setting's default, else of its annotation (`none`/`null` -> None)."""
    lowered = text.strip().lower()
    if lowered in ("none", "null"):
        return None
    if default is None and kind is not None:
        default = kind()
    if isinstance(default, bool):
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"--set {key}: expected a boolean, got {text!r}")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    if isinstance(default, (tuple, list)):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = [part for part in text.split(",")]
        if not isinstance(value, list):
            raise ValueError(f"--set {key}: expected a list (JSON or comma-separated), got {text!r}")  # noqa: TRY004
        return type(default)(value)
    if default is None:
        try:  # numbers and JSON literals for settings without a typed default
            value = json.loads(text)
            if isinstance(value, (int, float, list)) and not isinstance(value, bool):
                return value
        except json.JSONDecodeError:
            pass
    return text


def _parse_settings(builder_cls, pairs: Iterable[str]) -> dict[str, Any]:
    fields = _config_fields(builder_cls)
    settings: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        key = key.strip()
        if fields and key not in fields:
            raise SystemExit(f"unknown setting {key!r}; known settings: {sorted(fields)}")
        field = fields.get(key)
        default = _field_default(field) if field is not None else None
        try:
            settings[key] = _coerce_setting(key, value, default, _annotation_kind(field))
        except ValueError as err:
            raise SystemExit(str(err)) from err
    return settings


def _builder_settings(builder) -> dict[str, Any]:
    settings = getattr(builder, "settings", None)
    if isinstance(settings, Mapping):
        return dict(settings)
    config = builder.config
    if dataclasses.is_dataclass(config):
        return {
            f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in _NON_SETTING_FIELDS
        }
    return {}


def _importable_builder(builder_cls):
    """Under `python -m datasets_scripts.x` the class lives in `__main__`, and datasets names the cache folder and
    files after the module (`__main__`). Use the same class from its importable module instead."""
    if builder_cls.__module__ != "__main__":
        return builder_cls
    import importlib

    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is None or not spec.name or spec.name == "__main__":
        return builder_cls
    return getattr(importlib.import_module(spec.name), builder_cls.__name__, builder_cls)


def run_builder_cli(builder_cls, description: str, argv: list[str] | None = None) -> dict[str, Any]:
    """Command line shared by the builders; returns the printed summary.

    ```
    python -m datasets_scripts.<builder> --data_dir DIR [--config NAME ...] [--num_proc N] [--cache_dir DIR]
        [--set key=value ...] [--export OUT_DIR] [--push_to_hub REPO_ID]
    ```
    Every selected config (default: all of `builder_cls.BUILDER_CONFIGS`) is prepared with
    `download_and_prepare(num_proc=N)`; counts and the skipped summary are printed as JSON. `--export` writes
    Parquet + card (`export_parquet`); `--push_to_hub` exports (to `--export` or a temporary folder) and uploads to
    a private repo. Nothing is uploaded without `--push_to_hub`.
    """
    builder_cls = _importable_builder(builder_cls)
    config_names = [config.name for config in getattr(builder_cls, "BUILDER_CONFIGS", [])]
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data_dir", required=True, help="root of the source dataset (official layout)")
    parser.add_argument(
        "--config",
        action="append",
        choices=config_names or None,
        help=f"config to build (repeatable; default: all of {config_names})",
    )
    parser.add_argument("--num_proc", type=int, default=1, help="worker processes for the conversion")
    parser.add_argument("--cache_dir", default=None, help="datasets cache root (default: HF_DATASETS_CACHE)")
    parser.add_argument("--export", metavar="DIR", default=None, help="write Parquet + dataset card to DIR")
    parser.add_argument(
        "--push_to_hub", metavar="REPO_ID", default=None, help="upload the export to this PRIVATE dataset repo"
    )
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="builder setting (repeatable), e.g. --set dedup=mean --set max_side=512",
    )
    args = parser.parse_args(argv)
    settings = _parse_settings(builder_cls, args.settings)
    selected = args.config or config_names

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    built: dict[str, Any] = {}
    counts: dict[str, Any] = {}
    skipped: dict[str, Any] = {}
    card_settings: dict[str, Any] = {}
    for name in selected:
        builder = builder_cls(config_name=name, data_dir=args.data_dir, cache_dir=args.cache_dir, **settings)
        builder.download_and_prepare(num_proc=args.num_proc)
        dataset_dict = builder.as_dataset()
        built[name] = dataset_dict
        counts[name] = {
            "rows": {str(split): len(ds) for split, ds in dataset_dict.items()},
            "preprocessing": getattr(builder, "counts", None) or {},
        }
        skipped[name] = getattr(builder, "skipped", None) or SkipLog().summary()
        card_settings = _builder_settings(builder)

    summary = {
        "rows": {name: counts[name]["rows"] for name in selected},
        "preprocessing": {name: counts[name]["preprocessing"] for name in selected},
        "skipped": {name: {k: v for k, v in s.items()} for name, s in skipped.items()},
    }
    print(json.dumps(summary, indent=1, default=str))

    export_dir = args.export
    temporary = None
    if args.push_to_hub and not export_dir:
        temporary = tempfile.mkdtemp(prefix="litegpt_export_")
        export_dir = temporary
    try:
        if export_dir:
            title = getattr(builder_cls, "CARD_TITLE", builder_cls.__name__)
            path = export_parquet(built, export_dir, title, card_settings, counts, skipped=skipped)
            summary["export"] = str(path)
            print(f"exported to {path}", file=sys.stderr)
        if args.push_to_hub:
            summary["hub"] = push_to_hub(export_dir, args.push_to_hub, private=True)
            print(f"pushed to {summary['hub']} (private)", file=sys.stderr)
    finally:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)
    return summary


__all__ = ["CREDENTIAL_WARNING", "export_parquet", "push_to_hub", "run_builder_cli"]
