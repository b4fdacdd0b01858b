"""An LM head for `SFTTrainer` that scores the answer positions only, on every device.

TRL's `SFTTrainer` replaces the model's forward with a fused LM head (`trl.trainer.utils.add_fused_lm_head`):
called with `fused_lm_head=True` it returns per-token log-probabilities, entropy and top-1 flags without building
the `(batch, length, vocab)` logits. On CUDA/XPU (Triton) it projects only the positions whose next-token label is
not `-100`; everywhere else it projects *every* position, so that accelerators with static shapes (Neuron) do not
recompile on each batch. On a CPU that is pure waste: a LiteGPT row is mostly image tokens and instruction, and the
head (vocabulary x hidden, 28 M of SmolLM2's 135 M parameters) runs forward, again in the backward's recompute, and
once more for the hidden-state gradient over all of them. In the CPU demo that was about 30 % of a training step
(py-spy, 2026-12-07).

`add_answer_only_lm_head` re-patches the model the same way TRL does, with the same kernel
(`trl.kernels.ChunkedLogProbFunction`) and the same `FusedCausalLMOutput`, but always compacts to the answer
positions first. Each position's outputs do not depend on the others, so the results equal TRL's (see
`tests/test_lm_head.py`); `bench/bench_lm_head.py` prints the step-time ratio.
"""

from __future__ import annotations

import functools
import types
from typing import Any

import torch
from torch.distributed.tensor import DTensor
from trl.kernels import ChunkedLogProbFunction
from trl.trainer.utils import FusedCausalLMOutput, maybe_gather_lm_head_ctx

# Vocabulary columns per projection tile (TRL's own default): bounds the tile at answer tokens x 32768 floats.
VOCAB_CHUNK_SIZE = 32768
# What `SFTTrainer.compute_loss` reads: the loss, its entropy and token-accuracy metrics.
TRAINER_OUTPUTS = ("log_probs", "entropy", "is_top1")


def add_answer_only_lm_head(model: torch.nn.Module, outputs: tuple[str, ...] = TRAINER_OUTPUTS) -> None:
    """Patch `model` (the unwrapped causal LM, not a `PeftModel`) so that `model(..., labels=..., fused_lm_head=True)`
    projects only the positions whose next-token label is not `-100` and returns a `FusedCausalLMOutput`.

    Without `fused_lm_head` the model's own class forward runs (generation is unchanged). A call that asks for MoE
    router logits is handed to the forward the model had before (TRL's, which adds the load-balancing loss).
    Softcapped or scaled logits (Gemma, Granite...) are refused: LiteGPT's Llama-family LMs have neither.
    """
    text_config = model.config.get_text_config()
    for name in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier", "lm_head_multiplier"):
        if getattr(text_config, name, None) not in (None, 1, 1.0):
            raise ValueError(f"add_answer_only_lm_head does not handle {name}={getattr(text_config, name)!r}")
    previous_forward = model.forward
    class_forward = type(model).forward

    @functools.wraps(class_forward)
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head:
            extra = {"labels": labels, "shift_labels": shift_labels, "num_items_in_batch": num_items_in_batch}
            return class_forward(self, *args, **kwargs, **{key: value for key, value in extra.items() if value is not None})
        if kwargs.get("output_router_logits"):
            return previous_forward(*args, fused_lm_head=True, labels=labels, shift_labels=shift_labels,
                                    num_items_in_batch=num_items_in_batch, **kwargs)  # fmt: skip
        kwargs["use_cache"] = False
        hidden_states = getattr(self, self.base_model_prefix)(*args, **kwargs).last_hidden_state
        if shift_labels is None:  # labels of position t+1 are scored at position t
            hidden_states, targets = hidden_states[:, :-1], labels[:, 1:]
        else:  # already shifted (context/sequence parallelism)
            targets = shift_labels
        return answer_position_scores(hidden_states, targets, self.get_output_embeddings(), outputs, num_items_in_batch)

    model.forward = types.MethodType(forward, model)


def answer_position_scores(
    hidden_states: torch.Tensor,
    targets: torch.Tensor,
    lm_head: torch.nn.Linear,
    outputs: tuple[str, ...] = TRAINER_OUTPUTS,
    num_items_in_batch: torch.Tensor | int | None = None,
) -> FusedCausalLMOutput:
    """Per-position log-probability of `targets` (and the requested `outputs`) under `lm_head(hidden_states)`,
    computed on the positions whose target is not `-100` and zero elsewhere, as TRL's fused head returns them."""
    weight, bias = lm_head.weight, lm_head.bias
    if isinstance(weight, DTensor):  # FSDP2 shards: the kernel multiplies plain tensors (as TRL's head does)
        weight, bias = weight.full_tensor(), None if bias is None else bias.full_tensor()
    targets = targets.to(weight.device)
    mask = targets != -100
    with maybe_gather_lm_head_ctx(weight, bias):  # DeepSpeed ZeRO-3 partitions the head
        scores = ChunkedLogProbFunction.apply(
            hidden_states.to(weight.device)[mask], weight, bias, targets[mask], 1.0, VOCAB_CHUNK_SIZE, None, 1.0, outputs
        )
    # `masked_scatter` keeps a batch without any answer token connected to the graph (a differentiable zero).
    log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1 = (
        None if x is None else x.new_zeros(mask.shape).masked_scatter(mask, x) for x in scores
    )
    divisor = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    return FusedCausalLMOutput(
        loss=-log_probs.sum() / divisor,
        log_probs=log_probs,
        entropy=entropy,
        log_sum_sq_probs=log_sum_sq_probs,
        mean_logits=mean_logits,
        is_top1=is_top1,
        label_mask=mask,
    )


def unwrapped_causal_lm(model: Any) -> torch.nn.Module:
    """The model TRL patches: the PEFT model's base model, or the model itself."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


__all__ = ["TRAINER_OUTPUTS", "VOCAB_CHUNK_SIZE", "add_answer_only_lm_head", "answer_position_scores", "unwrapped_causal_lm"]
