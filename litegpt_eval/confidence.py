"""Confidences from the model's token log-probabilities (docs/design.md, "Metrics": mAP and AUC).

* **Box confidence** = `exp(mean log-prob)` of the tokens of its phrase (`<p>label</p> {<x1><y1><x2><y2>}`),
  computed by `LiteGPTProcessor.post_process_grounding(..., scores=...)` from the greedy output's transition
  scores (`compute_transition_scores(..., normalize_logits=True)`). The same rule scores the `No finding` phrase
  (`span_confidence`), used as the confidence of the VinBigData `No finding` pseudo-box.
* **Label confidence (AUC)**: for every label, the teacher-forced probability of its full token string at every
  list slot of the greedy answer, and the maximum over slots (`label_slot_probabilities`). Stage 2
  (`diagnosis_slots`): right after the prefix, after each separator (`,`, `and`), plus one slot appended after the
  last item (`", "` + label). Stage 1 (`grounding_slots`): the slots are where a `<p>` phrase begins - right after
  the prefix (`" <p>label</p>"`), after each `,` separator (`"<p>label</p>"`, no space, as the targets), plus one
  appended after the last item (`",<p>label</p>"`); the candidate string is the whole `<p>label</p>`, so the score
  is the probability that the model lists that label there.
* **Existence**: `P(Yes) / (P(Yes) + P(No))` of the teacher-forced answer strings at the start of the answer
  (`yes_probability`).

Teacher forcing reuses the image and the shared text: the towers run once per image (`get_projector_inputs`), the
prompt and each slot's context run once through the LM (`shared_prefix_logprobs` keeps their KV cache, extends it
from one slot to the next and scores all labels of a slot as one batch of short continuations);
`continuation_logprobs` is the plain reference (full sequences, no cache) it is tested against.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from codec_litegpt import GLOBAL_PREFIX, LOCAL_PREFIX, NO_FINDING

_NO_FINDING_RE = re.compile(r"\bno\s+findings?\b", re.IGNORECASE)
_GLOBAL_PREFIX_RE = re.compile(r"^\s*global\s+diseases\s+of\s+this\s+chest\s+radiograph\s+are\b", re.IGNORECASE)
_SEPARATOR_RE = re.compile(r",|\band\b", re.IGNORECASE)
_LOCAL_PREFIX_RE = re.compile(r"local\s+diseases\s+of\s+this\s+chest\s+radiograph\s+are\b", re.IGNORECASE)
GROUNDING_CANDIDATE = "<p>{label}</p>"


# ======================================================================================= greedy-output scores


def token_char_spans(tokenizer, ids: Sequence[int], skip_special_tokens: bool = True) -> tuple[str, list[tuple[int, int]]]:
    """Decoded text of `ids` and each token's character span in it (from the lengths of decoded prefixes)."""
    kwargs = {"skip_special_tokens": skip_special_tokens, "clean_up_tokenization_spaces": False}
    ids = [int(i) for i in ids]
    text = tokenizer.decode(ids, **kwargs)
    # all prefixes in one call (the fast tokenizers decode a batch natively): same values as a decode per prefix
    prefixes = tokenizer.batch_decode([ids[:k] for k in range(1, len(ids) + 1)], **kwargs) if ids else []
    spans, previous = [], 0
    for prefix in prefixes:
        end = min(max(len(prefix), previous), len(text))
        spans.append((previous, end))
        previous = end
    return text, spans


def span_confidence(span: tuple[int, int], token_spans: Sequence[tuple[int, int]], logprobs: Sequence[float]) -> float | None:
    """`exp(mean log-prob)` of the tokens overlapping the character span (None when no token does)."""
    start, end = span
    chosen = [lp for (s, e), lp in zip(token_spans, logprobs) if e > s and s < end and e > start]
    if not chosen:
        return None
    return float(math.exp(float(np.mean(chosen))))


def no_finding_confidence(text: str, token_spans, logprobs) -> float | None:
    """Confidence of the first "No finding" phrase of an answer (None if it does not say so or has no scores)."""
    if token_spans is None or logprobs is None:
        return None
    match = _NO_FINDING_RE.search(text)
    return span_confidence(match.span(), token_spans, logprobs) if match else None


def truncate_at_eos(ids: Sequence[int], logprobs: Sequence[float], eos_ids: set[int]) -> tuple[list[int], list[float], bool]:
    """Generated ids/log-probs up to and including the first EOS; `finished` is False when no EOS was produced."""
    ids = [int(i) for i in ids]
    for k, token in enumerate(ids):
        if token in eos_ids:
            return ids[: k + 1], list(logprobs[: k + 1]), True
    return ids, list(logprobs), False


# ======================================================================================= teacher forcing


def _tokenize(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _split_context(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of `context` and of `continuation` as tokenized after it (split at the longest common prefix)."""
    ctx = _tokenize(tokenizer, context) if context else []
    full = _tokenize(tokenizer, context + continuation)
    common = 0
    while common < min(len(ctx), len(full)) and ctx[common] == full[common]:
        common += 1
    return full[:common], full[common:]


def image_conditioning(model, pixel_values) -> dict[str, Any]:
    """Kwargs that condition the model on one image: cached `projector_inputs` when the model exposes them."""
    inner = getattr(model, "model", None)
    getter = getattr(inner, "get_projector_inputs", None)
    if getter is not None:
        import torch

        with torch.no_grad():
            return {"projector_inputs": getter(pixel_values)}
    return {"pixel_values": pixel_values}


def continuation_logprobs(
    model,
    prompt_ids: Sequence[int],
    conditioning: dict[str, Any],
    pairs: Sequence[tuple[list[int], list[int]]],
    pad_id: int = 0,
    batch_size: int = 16,
) -> list[float]:
    """Sum of log-probs of each `continuation` given `prompt + context` (teacher forcing, one image).

    `pairs` are `(context_ids, continuation_ids)`; `conditioning` holds `projector_inputs` or `pixel_values` of
    one image (batch dimension 1), repeated for every sequence. Sequences are right-padded.
    """
    import torch

    prompt_ids = [int(i) for i in prompt_ids]
    device = next(model.parameters()).device
    out: list[float] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        seqs = [prompt_ids + list(ctx) + list(cont) for ctx, cont in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for b, seq in enumerate(seqs):
            ids[b, : len(seq)] = torch.tensor(seq)
            mask[b, : len(seq)] = 1
        cond = {k: v.expand(len(seqs), *v.shape[1:]).to(device) for k, v in conditioning.items()}
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **cond).logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        for b, (ctx, cont) in enumerate(chunk):
            first = len(prompt_ids) + len(ctx)
            total = 0.0
            for k, token in enumerate(cont):
                total += float(logp[b, first + k - 1, token])
            out.append(total)
    return out


def _common_prefix(seqs: Sequence[Sequence[int]]) -> list[int]:
    first = list(seqs[0])
    n = min(len(seq) for seq in seqs)
    k = 0
    while k < n and all(seq[k] == first[k] for seq in seqs):
        k += 1
    return first[:k]


def shared_prefix_logprobs(
    model,
    prompt_ids: Sequence[int],
    conditioning: dict[str, Any],
    pairs: Sequence[tuple[list[int], list[int]]],
    batch_size: int = 32,
) -> list[float]:
    """Same values as `continuation_logprobs`, computed with a KV cache of the shared text.

    Pairs with the same context form a group. The group's shared text - `prompt + context` plus the tokens all its
    continuations begin with (e.g. `<p>` of every stage-1 candidate) - runs once through the LM: groups run in
    order of length, each extending (or cropping back to the common part of) one cache. The rest of the
    continuations of a group then run as one right-padded batch on copies of that cache.
    """
    import copy

    import torch

    prompt_ids = [int(i) for i in prompt_ids]
    device = next(model.parameters()).device
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, (ctx, cont) in enumerate(pairs):
        if not cont:
            raise ValueError("an empty continuation has no probability to score")
        groups.setdefault(tuple(prompt_ids + [int(i) for i in ctx]), []).append(k)
    plans = []
    for key, members in groups.items():
        conts = [[int(t) for t in pairs[k][1]] for k in members]
        shared = _common_prefix(conts)[: min(len(c) for c in conts) - 1]  # every continuation keeps >= 1 own token
        plans.append((list(key) + shared, len(key), members, [c[len(shared) :] for c in conts]))
    plans.sort(key=lambda plan: (len(plan[0]), plan[0]))

    out = [0.0] * len(pairs)
    cache, cached_ids = None, []
    cond = {key: value.to(device) for key, value in conditioning.items()}
    for full, key_len, members, rests in plans:
        common = 0
        while common < min(len(cached_ids), len(full)) and cached_ids[common] == full[common]:
            common += 1
        keep = min(common, key_len - 1)  # the logits of the last context token predict the continuations
        if cache is None or keep < len(prompt_ids):
            cache, keep = None, 0
        elif keep < len(cached_ids):
            cache.crop(keep - len(cached_ids))  # transformers 5: a negative count of tokens to drop from the end
        new = torch.tensor([full[keep:]], dtype=torch.long, device=device)
        with torch.no_grad():
            result = model(input_ids=new, past_key_values=cache, use_cache=True, **(cond if cache is None else {}))
        cache, cached_ids = result.past_key_values, list(full)
        logp_new = torch.log_softmax(result.logits[0].float(), dim=-1)  # row j predicts full[keep + j + 1]
        shared_total = sum(float(logp_new[i - 1 - keep, full[i]]) for i in range(key_len, len(full)))
        last_logp = logp_new[-1]
        for start in range(0, len(members), batch_size):
            chunk = list(range(start, min(start + batch_size, len(members))))
            totals = [shared_total + float(last_logp[rests[j][0]]) for j in chunk]
            width = max(len(rests[j]) for j in chunk) - 1
            if width > 0:
                ids = torch.zeros((len(chunk), width), dtype=torch.long)
                for b, j in enumerate(chunk):
                    ids[b, : len(rests[j]) - 1] = torch.tensor(rests[j][:-1])
                branch = copy.deepcopy(cache)
                branch.batch_repeat_interleave(len(chunk))
                with torch.no_grad():
                    logits = model(input_ids=ids.to(device), past_key_values=branch, use_cache=True).logits.float()
                logp = torch.log_softmax(logits, dim=-1)
                for b, j in enumerate(chunk):
                    for t in range(1, len(rests[j])):
                        totals[b] += float(logp[b, t - 1, rests[j][t]])
                del branch
            for j, total in zip(chunk, totals):
                out[members[j]] = total
    return out


def diagnosis_slots(answer: str) -> list[tuple[str, str]]:
    """List slots of a stage-2 answer as `(context, joiner)`: the candidate text is `context + joiner + label`.

    Slots: right after the prefix, after each separator (`,` / `and`), and one appended after the last item
    (`", "`). Without the prefix in the answer, the prefix is forced: one slot after it.
    """
    match = _GLOBAL_PREFIX_RE.match(answer)
    if not match:
        lead = answer[: len(answer) - len(answer.lstrip())]
        return [(lead + GLOBAL_PREFIX, " ")]
    slots = [(answer[: match.end()], " ")]
    body_end = len(answer.rstrip().rstrip("."))
    for sep in _SEPARATOR_RE.finditer(answer, match.end(), body_end):
        slots.append((answer[: sep.end()], " "))
    last = answer[:body_end].rstrip()
    if last.strip() and len(last) > match.end():
        slots.append((last + ",", " "))
    return slots


def grounding_slots(answer: str) -> list[tuple[str, str]]:
    """Phrase slots of a stage-1 answer as `(context, joiner)`: the candidate is `context + joiner + "<p>label</p>"`.

    Slots (where a `<p>` phrase begins): right after the `Local diseases of this chest radiograph are` prefix
    (joiner `" "`), after each `,` separator (joiner `""`: the targets join phrases with `","`), and one appended
    after the last item (`last item + ","`). Without the prefix in the answer, the prefix is forced: one slot after it.
    """
    match = _LOCAL_PREFIX_RE.search(answer)
    if not match:
        lead = answer[: len(answer) - len(answer.lstrip())]
        return [(lead + LOCAL_PREFIX, " ")]
    slots = [(answer[: match.end()], " ")]
    body_end = len(answer.rstrip().rstrip("."))
    for sep in re.finditer(",", answer[:body_end]):
        if sep.start() >= match.end():
            slots.append((answer[: sep.end()], ""))
    last = answer[:body_end].rstrip()
    if last.strip() and len(last) > match.end() and not last.endswith(","):
        slots.append((last + ",", ""))
    return slots


def label_slot_probabilities(
    model,
    tokenizer,
    prompt_ids: Sequence[int],
    conditioning: dict[str, Any],
    answer: str,
    labels: Sequence[str],
    batch_size: int = 32,
    task: str = "diagnosis",
) -> dict[str, float]:
    """Per label, the maximum over the answer's list slots of `P(label tokens | prompt, slot context)`.

    `task="diagnosis"`: slots of `diagnosis_slots`, candidate = the label; `task="grounding"`: slots of
    `grounding_slots`, candidate = `<p>label</p>`.
    """
    if task == "grounding":
        slots, template = grounding_slots(answer), GROUNDING_CANDIDATE
    elif task == "diagnosis":
        slots, template = diagnosis_slots(answer), "{label}"
    else:
        raise ValueError(f"label slots are defined for grounding and diagnosis answers, not {task!r}")
    pairs, owners = [], []
    for context, joiner in slots:
        for label in labels:
            pairs.append(_split_context(tokenizer, context, joiner + template.format(label=label)))
            owners.append(label)
    logps = shared_prefix_logprobs(model, prompt_ids, conditioning, pairs, batch_size)
    best: dict[str, float] = {label: -math.inf for label in labels}
    for label, lp in zip(owners, logps):
        best[label] = max(best[label], lp)
    return {label: float(math.exp(lp)) for label, lp in best.items()}


def yes_probability(
    model, tokenizer, prompt_ids: Sequence[int], conditioning: dict[str, Any], answer: str = "", batch_size: int = 2
) -> float:
    """`P(Yes) / (P(Yes) + P(No))` of the full answer strings, with the answer's own leading whitespace."""
    lead = answer[: len(answer) - len(answer.lstrip())]
    pairs = [_split_context(tokenizer, "", lead + word) for word in ("Yes", "No")]
    lp_yes, lp_no = shared_prefix_logprobs(model, prompt_ids, conditioning, pairs, batch_size)
    top = max(lp_yes, lp_no)
    p_yes, p_no = math.exp(lp_yes - top), math.exp(lp_no - top)
    return float(p_yes / (p_yes + p_no))


__all__ = [
    "NO_FINDING",
    "continuation_logprobs",
    "diagnosis_slots",
    "grounding_slots",
    "image_conditioning",
    "label_slot_probabilities",
    "no_finding_confidence",
    "shared_prefix_logprobs",
    "span_confidence",
    "token_char_spans",
    "truncate_at_eos",
    "yes_probability",
]
