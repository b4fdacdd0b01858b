"""LiteGPT processor: images (PIL, numpy, DICOM) -> pixel values, prompts -> tokens, generated answers -> boxes.

Shipped as remote code next to the weights, with its siblings `codec_litegpt.py` (label lists, the 0-100 box grid,
answer formatters and parsers, task prompts), `image_processing_litegpt.py` (DICOM and image loading,
`LiteGPTImageProcessor`) and `configuration_litegpt.py`, whose public names it re-exports: everything of the three
is importable from here. Imports only transformers, numpy, PIL and the standard library at module level (pydicom is
imported when a DICOM arrives).

* `LiteGPTProcessor`, a `ProcessorMixin` laid out like LLaVA's: `LiteGPTImageProcessor` + the language model's
  tokenizer, the Llama-2 chat template with LiteGPT's image block, `task_prompt`, and post-processing of generated
  answers into boxes (`post_process_grounding`, with per-box scores) and label sets (`post_process_diagnosis`).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from transformers.processing_utils import MultiModalData, ProcessorMixin

try:
    from .codec_litegpt import *  # re-exported: the codec's names are this module's API too
    from .codec_litegpt import (
        VINDR_GLOBAL_LABELS,
        VINDR_LOCAL_LABELS,
        completion_messages,
        parse_diagnosis_answer,
        parse_grounding_answer,
        prompt_messages,
    )
    from .codec_litegpt import __all__ as _codec_all
    from .configuration_litegpt import DEFAULT_IMAGE_TOKEN, DEFAULT_TASK_TOKENS
    from .image_processing_litegpt import *  # re-exported likewise
    from .image_processing_litegpt import LiteGPTImageProcessor, check_windowing
    from .image_processing_litegpt import __all__ as _image_processing_all
except ImportError:  # imported as a plain module (tests, repository scripts)
    from codec_litegpt import *
    from codec_litegpt import (
        VINDR_GLOBAL_LABELS,
        VINDR_LOCAL_LABELS,
        completion_messages,
        parse_diagnosis_answer,
        parse_grounding_answer,
        prompt_messages,
    )
    from codec_litegpt import __all__ as _codec_all
    from configuration_litegpt import DEFAULT_IMAGE_TOKEN, DEFAULT_TASK_TOKENS
    from image_processing_litegpt import *
    from image_processing_litegpt import LiteGPTImageProcessor, check_windowing
    from image_processing_litegpt import __all__ as _image_processing_all


# ======================================================================================= chat template

# Llama-2 chat layout with LiteGPT's image wrapper:
#   {bos}[INST] <Img><ImageHere></Img> {task_token} {instruction} [/INST] {answer}{eos}
# * one BOS per [INST] turn (single turn -> exactly one), text is tokenized with add_special_tokens=False;
# * the generation prompt ends right after "[/INST]" and the answer turn starts with its space, so
#   render(prompt, add_generation_prompt=True) is a prefix of render(prompt + completion) and the loss covers
#   " {answer}{eos}" only; `{% generation %}` marks it for `assistant_only_loss`;
# * content is a string or a list of blocks: {"type": "image"} -> "<Img><ImageHere></Img> ", {"type": "text"};
# * an optional system message goes inside the first turn, Llama-2 `<<SYS>>` style.
_CHAT_TEMPLATE = r"""{#- LiteGPT chat template (Llama-2 chat layout) -#}
{%- macro render_content(content) -%}
{%- if content is string -%}
{{- content -}}
{%- elif content is not none -%}
{%- for block in content -%}
{%- if block['type'] == 'image' -%}
{{- __IMAGE_BLOCK__ -}}
{%- elif block['type'] == 'text' -%}
{{- block['text'] -}}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{%- set bos = bos_token if (bos_token is defined and bos_token) else '' -%}
{%- set eos = eos_token if (eos_token is defined and eos_token) else '' -%}
{%- if messages and messages[0]['role'] == 'system' -%}
{%- set system_message = render_content(messages[0]['content']) -%}
{%- set loop_messages = messages[1:] -%}
{%- else -%}
{%- set system_message = '' -%}
{%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
{%- if message['role'] not in ['user', 'assistant'] -%}
{{- raise_exception('LiteGPT chat template: unsupported role ' ~ message['role']) -}}
{%- endif -%}
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
{{- raise_exception('LiteGPT chat template: roles must alternate user/assistant after an optional system message') -}}
{%- endif -%}
{%- if message['role'] == 'user' -%}
{{- bos ~ '[INST] ' -}}
{%- if loop.first and system_message -%}
{{- '<<SYS>>\n' ~ system_message ~ '\n<</SYS>>\n\n' -}}
{%- endif -%}
{{- render_content(message['content']) ~ ' [/INST]' -}}
{%- else -%}
{%- generation -%}
{{- ' ' ~ render_content(message['content']) ~ eos -}}
{%- endgeneration -%}
{%- endif -%}
{%- endfor -%}
"""


def build_chat_template(
    image_token: str = DEFAULT_IMAGE_TOKEN, image_wrapper: Sequence[str] = ("<Img>", "</Img>")
) -> str:
    """The Jinja chat template, with the image block `"{wrapper[0]}{image_token}{wrapper[1]} "` baked in."""
    if len(image_wrapper) != 2:
        raise ValueError(f"image_wrapper must be (open, close), got {image_wrapper!r}")
    image_block = f"{image_wrapper[0]}{image_token}{image_wrapper[1]} "
    return _CHAT_TEMPLATE.replace("__IMAGE_BLOCK__", json.dumps(image_block))


def build_image_processor(image_size: int = 224) -> LiteGPTImageProcessor:
    """LiteGPT's image processor for a square input of side `image_size` (the encoders' input size)."""
    return LiteGPTImageProcessor(image_size=image_size)


# ======================================================================================= generated output helpers


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
        if hasattr(value, "float") and str(getattr(value, "dtype", "")).startswith("torch.bfloat16"):
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def _sequences_as_rows(generated: Any) -> list[list[int]] | list[str]:
    """Token ids of a `generate()` output / tensor / array / list, as one list per sample (or the strings given)."""
    if hasattr(generated, "sequences"):
        generated = generated.sequences
    if isinstance(generated, str):
        return [generated]
    if isinstance(generated, (list, tuple)) and generated and all(isinstance(item, str) for item in generated):
        return list(generated)
    if isinstance(generated, (list, tuple)) and (not generated or isinstance(generated[0], (int, np.integer))):
        return [[int(v) for v in generated]]
    if isinstance(generated, (list, tuple)) and not isinstance(generated[0], (list, tuple)):
        return [[int(v) for v in _to_numpy(row).reshape(-1)] for row in generated]
    if isinstance(generated, (list, tuple)):
        return [[int(v) for v in row] for row in generated]
    array = _to_numpy(generated)
    if array.ndim == 1:
        array = array[None]
    return [[int(v) for v in row] for row in array]


def _token_logprobs(scores: Any, rows: list[list[int]]) -> list[np.ndarray]:
    """Log-probabilities of the last `T` tokens of each row.

    `scores` is either `generate()`'s per-step logits (a tuple of `T` arrays `(B, V)`, as returned with
    `output_scores=True`), normalised here with a log-softmax, or per-token log-probabilities `(B, T)` such as
    `model.compute_transition_scores(..., normalize_logits=True)`.
    """
    if isinstance(scores, (list, tuple)):
        steps = len(scores)
        out = np.zeros((len(rows), steps), dtype=np.float64)
        for t, step_logits in enumerate(scores):
            logits = _to_numpy(step_logits).astype(np.float64)
            if logits.ndim == 1:
                logits = logits[None]
            peak = np.max(logits, axis=-1, keepdims=True)
            log_norm = peak[:, 0] + np.log(np.sum(np.exp(logits - peak), axis=-1))
            for b, row in enumerate(rows):
                token = row[len(row) - steps + t]
                out[b, t] = logits[b, token] - log_norm[b]
        return [out[b] for b in range(len(rows))]
    array = _to_numpy(scores).astype(np.float64)
    if array.ndim == 1:
        array = array[None]
    if array.shape[0] != len(rows):
        raise ValueError(f"scores cover {array.shape[0]} samples but {len(rows)} sequences were given")
    return [array[b] for b in range(len(rows))]


def _image_sizes_per_sample(image_size: Any, batch: int) -> list[tuple[float, float]]:
    """`(width, height)` for every sample from one pair (broadcast) or one pair per sample."""
    sizes = _to_numpy(image_size).astype(np.float64)
    if sizes.shape == (2,):
        return [(float(sizes[0]), float(sizes[1]))] * batch
    if sizes.ndim == 2 and sizes.shape[1] == 2 and sizes.shape[0] == batch:
        return [(float(w), float(h)) for w, h in sizes]
    raise ValueError(f"image_size must be (width, height) or one pair per sample ({batch}), got shape {sizes.shape}")


_INST_END = "[/INST]"


def _answer_part(text: str) -> tuple[str, int]:
    """The text after the last `[/INST]` (the answer when the prompt is included) and its offset."""
    cut = text.rfind(_INST_END)
    if cut < 0:
        return text, 0
    return text[cut + len(_INST_END) :], cut + len(_INST_END)


# Tokens of left context when one token's text is decoded: enough for SentencePiece's leading-space rule and for
# characters split over byte tokens (at most 4 bytes in UTF-8).
SPAN_CONTEXT_TOKENS = 4


def token_spans(decode: Any, ids: Sequence[int], text: str) -> list[tuple[int, int]]:
    """Character span of every token of `ids` in `text`, the decoded `ids` (`decode`: a list of ids -> its text).

    A token's length is `len(decode(window + [token])) - len(decode(window))`, `window` being its
    `SPAN_CONTEXT_TOKENS` preceding tokens: two short decodes per token, linear in the answer's length. When those
    lengths do not add up to `text` (a tokenizer whose decoding is not local), the spans come from the lengths of
    every decoded prefix instead (exact, but quadratic).
    """
    ids = list(ids)
    lengths = []
    for k, token in enumerate(ids):
        window = ids[max(0, k - SPAN_CONTEXT_TOKENS) : k]
        lengths.append(len(decode(window + [token])) - len(decode(window)))
    if sum(lengths) != len(text) or any(length < 0 for length in lengths):
        return prefix_token_spans(decode, ids, text)
    ends = np.cumsum([0, *lengths]).tolist()
    return [(int(ends[k]), int(ends[k + 1])) for k in range(len(ids))]


def prefix_token_spans(decode: Any, ids: Sequence[int], text: str) -> list[tuple[int, int]]:
    """Token spans from the lengths of the decoded prefixes `ids[:k]` (monotone, clipped to `text`): exact for any
    tokenizer, `len(ids)` decodes of growing length."""
    spans, previous = [], 0
    for k in range(1, len(ids) + 1):
        end = min(max(len(decode(list(ids[:k]))), previous), len(text))
        spans.append((previous, end))
        previous = end
    return spans


# ======================================================================================= processor


class LiteGPTProcessor(ProcessorMixin):
    r"""Processor of LiteGPT: a `LiteGPTImageProcessor` (any input, squash-resize, CLIP normalisation) plus the LM
    tokenizer.

    Images may be anything `load_image` accepts (PIL in any mode, numpy, DICOM paths or datasets, PNG/JPEG paths).
    Each `<ImageHere>` in the text is expanded to `num_image_tokens` copies; text is tokenized with
    `add_special_tokens=False` because the chat template emits the single BOS.

    Args:
        image_processor (`LiteGPTImageProcessor`, *optional*): defaults to `LiteGPTImageProcessor()` (224 px). A plain
            `CLIPImageProcessor` (what processors saved before `LiteGPTImageProcessor` hold) is converted, with its
            settings, to a `LiteGPTImageProcessor`.
        tokenizer: the LM tokenizer; it must already know `image_token` (see `from_tokenizer`).
        chat_template (`str`, *optional*): defaults to `build_chat_template(image_token, image_wrapper)`.
        image_token (`str`, defaults to `"<ImageHere>"`): the placeholder token.
        num_image_tokens (`int`, defaults to 49): LM positions per image (`LiteGPTConfig.num_image_tokens`).
        image_wrapper (`list[str]`, defaults to `["<Img>", "</Img>"]`): text around the placeholder.
        task_tokens (`dict[str, str]`, *optional*): task token per task, defaults to `DEFAULT_TASK_TOKENS`.
        windowing (`str`, *optional*): DICOM conversion (`"window"`, `"paper_appendix"`, `"voi_lut"`, `"minmax"`; see
            `dicom_to_uint8`), held by the image processor (`windowing` reads and sets it). Given, it overrides the
            image processor's (processors saved before `LiteGPTImageProcessor` kept it here).
    """

    # The processor ships as remote code: saving copies this file and every sibling it imports relatively
    # (`codec_litegpt.py`, `image_processing_litegpt.py`, `configuration_litegpt.py`) and writes
    # `"auto_map": {"AutoProcessor": "processing_litegpt.LiteGPTProcessor"}` into processor_config.json.
    _auto_class = "AutoProcessor"
    # Default tokenizer kwargs (lowest priority in `_merge_kwargs`): the chat template already emits the BOS.
    text_kwargs: ClassVar[dict[str, Any]] = {"add_special_tokens": False}

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        image_token: str = DEFAULT_IMAGE_TOKEN,
        num_image_tokens: int = 49,
        image_wrapper: Sequence[str] = ("<Img>", "</Img>"),
        task_tokens: dict[str, str] | None = None,
        windowing: str | None = None,
        **kwargs,
    ):
        if tokenizer is None:
            raise ValueError("LiteGPTProcessor needs a tokenizer (use LiteGPTProcessor.from_tokenizer to build one)")
        if windowing is not None:
            check_windowing(windowing)
        if image_processor is None:
            image_processor = LiteGPTImageProcessor(windowing=windowing)
        elif not hasattr(image_processor, "load_images"):
            # Duck-typed: a remote-code LiteGPTImageProcessor is another class object than this module's.
            image_processor = LiteGPTImageProcessor.from_image_processor(image_processor, windowing=windowing)
        elif windowing is not None:
            image_processor.windowing = windowing
        if int(num_image_tokens) < 1:
            raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
        self.image_token = image_token
        self.num_image_tokens = int(num_image_tokens)
        self.image_wrapper = list(image_wrapper)
        self.task_tokens = dict(DEFAULT_TASK_TOKENS) if task_tokens is None else dict(task_tokens)
        self.image_token_id = self._lookup_image_token_id(tokenizer, image_token)
        if chat_template is None:
            chat_template = build_chat_template(image_token, self.image_wrapper)
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    @staticmethod
    def _lookup_image_token_id(tokenizer, image_token: str) -> int:
        """Id of the placeholder; it must be a single added token, else it would be split into characters."""
        ids = tokenizer.encode(image_token, add_special_tokens=False)
        if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
            raise ValueError(
                f"the tokenizer does not have {image_token!r} as a single token (got ids {ids}); "
                "use LiteGPTProcessor.from_tokenizer(...) to add it"
            )
        return int(ids[0])

    # ----------------------------------------------------------------------------------- construction
    @classmethod
    def from_tokenizer(
        cls,
        tokenizer,
        image_size: int = 224,
        num_image_tokens: int = 49,
        config: Any = None,
        **kwargs,
    ) -> LiteGPTProcessor:
        """Build the processor from a bare LM tokenizer (conversion script, tests).

        A copy of the tokenizer gets `image_token` as an extra special token if missing, pad = id 0 if it has
        no pad token (`<unk>` for Llama) and left padding, which batched generation needs (training collators such as
        TRL's choose their padding side per call). The image processor and chat template are built here. With a
        `LiteGPTConfig` as `config`, `image_size`, `num_image_tokens`, `image_token` and `task_tokens` come from it.
        Remaining kwargs go to `__init__` (`image_wrapper`, `task_tokens`, `windowing`, `chat_template`...).
        """
        if config is not None:
            image_size = config.image_size
            num_image_tokens = config.num_image_tokens
            kwargs.setdefault("image_token", config.image_token)
            kwargs.setdefault("task_tokens", dict(config.task_tokens))
        image_token = kwargs.setdefault("image_token", DEFAULT_IMAGE_TOKEN)
        tokenizer = copy.deepcopy(tokenizer)
        if image_token not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"extra_special_tokens": [image_token]}, replace_extra_special_tokens=False)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(0)
        tokenizer.padding_side = "left"
        tokenizer.init_kwargs["padding_side"] = "left"  # `save_pretrained` writes the init kwargs' current values
        return cls(
            image_processor=build_image_processor(image_size),
            tokenizer=tokenizer,
            num_image_tokens=num_image_tokens,
            **kwargs,
        )

    @property
    def image_size(self) -> int:
        """Square side of `pixel_values`."""
        return int(self.image_processor.size["height"])

    @property
    def windowing(self) -> str:
        """The DICOM conversion of this processor's images (held by the image processor)."""
        return self.image_processor.windowing

    @windowing.setter
    def windowing(self, value: str) -> None:
        self.image_processor.windowing = check_windowing(value)

    # ----------------------------------------------------------------------------------- calling
    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        videos: Any = None,
        audio: Any = None,
        windowing: str | None = None,
        return_image_sizes: bool = False,
        **kwargs,
    ):
        """Tokenize `text` (expanding each `<ImageHere>`) and preprocess `images`.

        `images` may be one image or a (nested, per-sample) list of anything `load_image` accepts; they are
        loaded to RGB PIL first (DICOM with `windowing`, default `self.windowing`). Returns a `BatchFeature`
        with `input_ids`, `attention_mask`, `pixel_values` `(num_images, 3, S, S)`. With
        `return_image_sizes=True` it also holds `image_sizes`, the original `(width, height)` per image (a
        plain list, for `post_process_grounding`; pop it before calling the model). A mismatch between the
        number of `<ImageHere>` and of images raises `ValueError`.
        """
        image_sizes = None
        if images is not None:
            images, image_sizes = self.image_processor.load_images(images, windowing)
        outputs = super().__call__(images=images, text=text, videos=videos, audio=audio, **kwargs)
        if return_image_sizes:
            outputs["image_sizes"] = image_sizes or []
        return outputs

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        """Every image becomes `num_image_tokens` placeholders (49 = 245 patch tokens / 5 in the paper)."""
        return self.image_token * self.num_image_tokens

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs) -> MultiModalData:
        """Placeholder count per image (fixed: the image is squash-resized)."""
        data = {}
        if image_sizes is not None:
            data = {
                "num_image_tokens": [self.num_image_tokens] * len(image_sizes),
                "num_image_patches": [1] * len(image_sizes),
            }
        return MultiModalData(**data)

    # ----------------------------------------------------------------------------------- prompts
    def task_prompt(
        self,
        task: str,
        instruction: str | None = None,
        entity: str | None = None,
        add_generation_prompt: bool = True,
        answer: str | None = None,
        system: str | None = None,
    ) -> str:
        """Rendered prompt string of a task, e.g. `<s>[INST] <Img><ImageHere></Img> [identify] ... [/INST]`.

        With `answer`, the full training sequence (`... [/INST] {answer}</s>`) is rendered instead. Pass the result
        to the processor together with one image.
        """
        messages = prompt_messages(
            task, instruction=instruction, entity=entity, task_tokens=self.task_tokens, system=system
        )
        if answer is not None:
            messages = messages + completion_messages(answer)
            add_generation_prompt = False
        return self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)

    # ----------------------------------------------------------------------------------- post-processing
    def _decode_with_offsets(self, ids: list[int], skip_special_tokens: bool) -> tuple[str, list[tuple[int, int]]]:
        """Decoded text and each token's character span in it (tokenizer-agnostic, see `token_spans`)."""
        decode_kwargs = {"skip_special_tokens": skip_special_tokens, "clean_up_tokenization_spaces": False}

        def decode(token_ids: list[int]) -> str:
            return self.tokenizer.decode(token_ids, **decode_kwargs)

        text = decode(ids)
        return text, token_spans(decode, ids, text)

    def _decode_rows(
        self, generated: Any, scores: Any, skip_special_tokens: bool
    ) -> list[tuple[str, list[tuple[int, int]] | None, np.ndarray | None]]:
        """Per sample: answer text (after the last `[/INST]`), token spans in it and token log-probs (if scored)."""
        if scores is None and hasattr(generated, "scores") and generated.scores is not None:
            scores = generated.scores
        rows = _sequences_as_rows(generated)
        if rows and isinstance(rows[0], str):
            return [(_answer_part(text)[0], None, None) for text in rows]
        if scores is None:
            decoded = self.tokenizer.batch_decode(
                rows, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
            )
            return [(_answer_part(text)[0], None, None) for text in decoded]
        logprobs = _token_logprobs(scores, rows)
        out = []
        for row, row_logprobs in zip(rows, logprobs):
            generated_ids = row[len(row) - len(row_logprobs) :]
            text, spans = self._decode_with_offsets(generated_ids, skip_special_tokens)
            answer, offset = _answer_part(text)
            spans = [(start - offset, end - offset) for start, end in spans]
            out.append((answer, spans, row_logprobs))
        return out

    @staticmethod
    def _phrase_score(span: tuple[int, int], token_spans, logprobs) -> float | None:
        """`exp(mean log-prob)` of the tokens overlapping the phrase (label and coordinates: the box confidence of mAP)."""
        if token_spans is None or logprobs is None:
            return None
        start, end = span
        selected = [lp for (s, e), lp in zip(token_spans, logprobs) if e > s and s < end and e > start]
        if not selected:
            return None
        return float(math.exp(float(np.mean(selected))))

    def post_process_grounding(
        self,
        generated: Any,
        image_size: Any,
        scores: Any = None,
        skip_special_tokens: bool = True,
        labels: Sequence[str] = VINDR_LOCAL_LABELS,
    ) -> list[dict[str, Any]]:
        """Turn generated stage-1 answers into boxes.

        Args:
            generated: token ids (tensor/array/list, one or several rows, prompt included or not), a `generate()`
                output (its `.scores` are used when present) or already decoded strings. Text after the last
                `[/INST]` is parsed.
            image_size: original `(width, height)` (DICOM Columns, Rows), or one pair per sample.
            scores: per-step logits of `generate(..., output_scores=True)` or per-token log-probs `(B, T)` of the
                generated tokens (the last `T` ids of each row). Each box then gets
                `score = exp(mean log-prob)` of its phrase's tokens; otherwise `score` is None.

        Returns:
            One dict per sample: `text`, `findings` (list of `{"label", "box" (pixel xyxy floats), "grid_box",
            "score"}`), `no_finding`, `none_listed`, `contradiction` and `failures` (parse failures, counted).
        """
        decoded = self._decode_rows(generated, scores, skip_special_tokens)
        sizes = _image_sizes_per_sample(image_size, len(decoded))
        results = []
        for (text, token_spans, logprobs), (width, height) in zip(decoded, sizes):
            parsed = parse_grounding_answer(text, width, height, labels=labels)
            findings = [
                {
                    "label": finding.label,
                    "box": finding.box,
                    "grid_box": finding.grid_box,
                    "score": self._phrase_score(finding.span, token_spans, logprobs),
                }
                for finding in parsed.findings
            ]
            results.append(
                {
                    "text": text,
                    "findings": findings,
                    "no_finding": parsed.no_finding,
                    "none_listed": parsed.none_listed,
                    "contradiction": parsed.contradiction,
                    "failures": list(parsed.failures),
                }
            )
        return results

    def post_process_diagnosis(
        self, generated: Any, skip_special_tokens: bool = True, labels: Sequence[str] = VINDR_GLOBAL_LABELS
    ) -> list[dict[str, Any]]:
        """Turn generated stage-2 answers into label sets: one dict per sample with `text`, `positive`,
        `negative`, `no_finding`, `none_listed`, `contradiction`, `failures` (see `parse_diagnosis_answer`)."""
        decoded = self._decode_rows(generated, None, skip_special_tokens)
        results = []
        for text, _, _ in decoded:
            parsed = parse_diagnosis_answer(text, labels=labels)
            results.append(
                {
                    "text": text,
                    "positive": parsed.positive,
                    "negative": parsed.negative,
                    "no_finding": parsed.no_finding,
                    "none_listed": parsed.none_listed,
                    "contradiction": parsed.contradiction,
                    "failures": list(parsed.failures),
                }
            )
        return results


__all__ = [
    # the processor's own names
    "LiteGPTProcessor",
    "SPAN_CONTEXT_TOKENS",
    "build_chat_template",
    "build_image_processor",
    "prefix_token_spans",
    "token_spans",
    # re-exported from the siblings
    "DEFAULT_IMAGE_TOKEN",
    "DEFAULT_TASK_TOKENS",
] + list(_codec_all) + list(_image_processing_all)
