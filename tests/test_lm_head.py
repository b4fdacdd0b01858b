"""The answer-only LM head: the same per-token outputs, loss and gradients as TRL's fused head, fewer positions."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from trl.trainer.utils import add_fused_lm_head

from litegpt_train import lm_head
from litegpt_train.lm_head import add_answer_only_lm_head, unwrapped_causal_lm
from modeling_litegpt import LiteGPTForConditionalGeneration

IMAGE_TOKEN_ID = 98  # tiny preset


def tiny_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Two right-padded rows, 4 image tokens each; answers (labels) only at the ends, a different length per row."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.tensor([
        [1, 5, *[IMAGE_TOKEN_ID] * 4, 7, 8, 9, 11, 12, 13, 14, 15],
        [1, 5, *[IMAGE_TOKEN_ID] * 4, 7, 8, 21, 22, 0, 0, 0, 0],
    ])  # fmt: skip
    attention_mask = (torch.arange(input_ids.shape[1]) < torch.tensor([[14], [10]])).long()
    labels = torch.full_like(input_ids, -100)
    labels[0, 9:14], labels[1, 8:10] = input_ids[0, 9:14], input_ids[1, 8:10]
    pixel_values = torch.randn(2, 3, 32, 32, generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "pixel_values": pixel_values}


def peft_twins(tiny_model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same LoRA model twice: one with TRL's fused head, one with the answer-only head on top of it."""
    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)",
                        modules_to_save=["multi_modal_projector"], init_lora_weights=False)  # fmt: skip
    trl_model = get_peft_model(copy.deepcopy(tiny_model).train(), config)
    ours = copy.deepcopy(trl_model)
    for model in (trl_model, ours):  # as SFTTrainer does: on the base model, before training
        add_fused_lm_head(unwrapped_causal_lm(model), outputs=lm_head.TRAINER_OUTPUTS)
    add_answer_only_lm_head(unwrapped_causal_lm(ours))
    return trl_model, ours


def fused_outputs_and_grads(model: torch.nn.Module, batch: dict[str, torch.Tensor], num_items=None):
    model.zero_grad()
    out = model(**batch, fused_lm_head=True, num_items_in_batch=num_items)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return out, grads


@pytest.mark.parametrize("num_items", [None, torch.tensor(11.0)])
def test_answer_only_head_equals_trl_fused_head(tiny_model, num_items):
    trl_model, ours = peft_twins(tiny_model)
    batch = tiny_batch()
    expected, expected_grads = fused_outputs_and_grads(trl_model, batch, num_items)
    got, got_grads = fused_outputs_and_grads(ours, batch, num_items)
    torch.testing.assert_close(got.loss, expected.loss)
    for field in ("log_probs", "entropy"):
        torch.testing.assert_close(getattr(got, field), getattr(expected, field), msg=field)
    assert torch.equal(got.is_top1, expected.is_top1) and torch.equal(got.label_mask, expected.label_mask)
    assert got.log_probs.shape == (2, batch["input_ids"].shape[1] - 1)
    assert int(got.label_mask.sum()) == 7 and bool((got.log_probs[~got.label_mask] == 0).all())
    # LoRA and projector gradients both flow, and equal TRL's.
    assert any("lora_A" in name for name in got_grads) and any("multi_modal_projector" in name for name in got_grads)
    assert got_grads.keys() == expected_grads.keys()
    for name, grad in got_grads.items():
        torch.testing.assert_close(grad, expected_grads[name], msg=name)


def test_answer_only_head_projects_only_answer_positions(tiny_model, monkeypatch):
    _, ours = peft_twins(tiny_model)
    seen_rows = []
    kernel = lm_head.ChunkedLogProbFunction

    class CountingKernel:
        @staticmethod
        def apply(hidden, *args):
            seen_rows.append(hidden.shape[0])
            return kernel.apply(hidden, *args)

    monkeypatch.setattr(lm_head, "ChunkedLogProbFunction", CountingKernel)
    ours(**tiny_batch(), fused_lm_head=True)
    assert seen_rows == [7]  # the 5 + 2 answer tokens, not 2 x 13 shifted positions


def test_plain_forward_and_generation_are_unchanged(tiny_model):
    trl_model, ours = peft_twins(tiny_model)
    batch = tiny_batch()
    with torch.no_grad():
        expected = trl_model(**batch)
        got = ours(**batch)
    torch.testing.assert_close(got.logits, expected.logits)
    torch.testing.assert_close(got.loss, expected.loss)
    prompt = {key: batch[key][:1, :8] for key in ("input_ids", "attention_mask")}
    generated = [model.generate(**prompt, pixel_values=batch["pixel_values"][:1], max_new_tokens=4, do_sample=False)
                 for model in (trl_model.eval(), ours.eval())]  # fmt: skip
    assert torch.equal(*generated)


def test_batch_without_answer_tokens_gives_a_differentiable_zero(tiny_model):
    _, ours = peft_twins(tiny_model)
    batch = tiny_batch()
    batch["labels"] = torch.full_like(batch["labels"], -100)
    out = ours(**batch, fused_lm_head=True)
    out.loss.backward()
    assert out.loss.item() == 0.0 and int(out.label_mask.sum()) == 0


def test_softcapped_or_scaled_logits_are_refused(tiny_config):
    tiny_config.text_config.final_logit_softcapping = 30.0
    model = LiteGPTForConditionalGeneration(tiny_config)
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        add_answer_only_lm_head(model)
