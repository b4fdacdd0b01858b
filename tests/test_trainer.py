"""`litegpt_train.trainer`: learning rate and start step per parameter role, and the dataset-constant loss normaliser."""

from __future__ import annotations

import pytest
import torch
from transformers import get_cosine_schedule_with_warmup

from litegpt_train.trainer import hold_roles_until, mean_loss_tokens_per_row, split_param_groups_by_role


class TinyVLM(torch.nn.Module):
    """Parameter names shaped like the PEFT-wrapped model's: LoRA factors, a projector copy and a frozen-style rest."""

    def __init__(self):
        super().__init__()
        self.multi_modal_projector = torch.nn.Linear(3, 3)
        self.q_proj = torch.nn.Module()
        self.q_proj.lora_A = torch.nn.Linear(3, 2, bias=False)
        self.q_proj.lora_B = torch.nn.Linear(2, 3, bias=False)
        self.vision_tower = torch.nn.Linear(3, 3)


def trainer_style_optimizer(model: torch.nn.Module, lr: float = 1e-3) -> torch.optim.AdamW:
    """AdamW with the Trainer's two groups: weights decay, biases do not."""
    decay = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def role_split_optimizer(model: torch.nn.Module, role_rates: dict[str, float], lr: float = 1e-3):
    """The trainer's optimizer after the role split, and the names it was split by."""
    names = {id(p): n for n, p in model.named_parameters()}
    return split_param_groups_by_role(trainer_style_optimizer(model, lr=lr), names, role_rates), names


def rate_per_module(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, float]:
    """Each group's current learning rate, keyed by the top module of its first parameter."""
    return {names[id(g["params"][0])].split(".")[0]: g["lr"] for g in optimizer.param_groups}


def test_split_gives_each_role_its_rate_and_keeps_weight_decay():
    model = TinyVLM()
    optimizer, names = role_split_optimizer(model, {"projector": 1e-2, "vision": 5e-4})
    seen = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(seen) == sorted(names), "every parameter in exactly one group"
    by_name = {names[id(p)]: group for group in optimizer.param_groups for p in group["params"]}
    assert by_name["multi_modal_projector.weight"]["lr"] == 1e-2
    assert by_name["multi_modal_projector.bias"]["lr"] == 1e-2
    assert by_name["vision_tower.weight"]["lr"] == 5e-4
    assert by_name["q_proj.lora_A.weight"]["lr"] == 1e-3  # no rate given: the optimizer's
    assert by_name["multi_modal_projector.weight"]["weight_decay"] == 0.1
    assert by_name["multi_modal_projector.bias"]["weight_decay"] == 0.0


def test_scheduler_scales_every_role_from_its_own_rate():
    model = TinyVLM()
    optimizer, names = role_split_optimizer(model, {"projector": 1e-2})
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    model.multi_modal_projector(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    rates = rate_per_module(optimizer, names)
    assert rates["multi_modal_projector"] == pytest.approx(5e-3)
    assert rates["q_proj"] == pytest.approx(5e-4)


def lora_and_projector_rates(scheduler, names, steps: int) -> list[dict[str, float]]:
    """Each role's learning rate at steps 0..steps-1 (what optimizer.step uses), the scheduler stepped between."""
    rates = []
    for _ in range(steps):
        rates.append(rate_per_module(scheduler.optimizer, names))
        scheduler.optimizer.step()
        scheduler.step()
    return rates


def test_held_role_learns_nothing_before_its_start_step_then_follows_the_schedule():
    optimizer, names = role_split_optimizer(TinyVLM(), {"projector": 1e-2})
    scheduler = hold_roles_until(get_cosine_schedule_with_warmup(optimizer, 2, 10), {"lora": 4})
    twin_optimizer, twin_names = role_split_optimizer(TinyVLM(), {"projector": 1e-2})
    reference = lora_and_projector_rates(get_cosine_schedule_with_warmup(twin_optimizer, 2, 10), twin_names, 10)
    held = lora_and_projector_rates(scheduler, names, 10)
    assert [r["q_proj"] for r in held[:4]] == [0.0] * 4
    assert [r["q_proj"] for r in held[4:]] == pytest.approx([r["q_proj"] for r in reference[4:]])
    assert reference[4]["q_proj"] > 0
    assert [r["multi_modal_projector"] for r in held] == pytest.approx([r["multi_modal_projector"] for r in reference])


def test_held_lora_weights_stay_bit_identical_until_the_start_step():
    torch.manual_seed(0)
    model = TinyVLM()
    optimizer, _ = role_split_optimizer(model, {}, lr=1e-2)
    scheduler = hold_roles_until(torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0), {"lora": 3})
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randn(4, 3)
    for step in range(5):
        optimizer.zero_grad()
        model.q_proj.lora_B(model.q_proj.lora_A(model.multi_modal_projector(x))).square().sum().backward()
        optimizer.step()
        scheduler.step()
        lora_same = torch.equal(model.q_proj.lora_A.weight, start["q_proj.lora_A.weight"])
        assert lora_same == (step < 3), f"step {step}: LoRA {'unchanged' if lora_same else 'changed'}"
        assert not torch.equal(model.multi_modal_projector.weight, start["multi_modal_projector.weight"])


def test_hold_needs_a_lambda_schedule():
    optimizer, _ = role_split_optimizer(TinyVLM(), {})
    with pytest.raises(TypeError, match="needs a LambdaLR schedule, got StepLR"):
        hold_roles_until(torch.optim.lr_scheduler.StepLR(optimizer, 2), {"lora": 3})


def test_mean_loss_tokens_per_row_counts_shifted_unmasked_labels():
    rows = [{"n": 3}, {"n": 1}, {"n": 5}, {"n": 0}]

    def collator(batch):
        width = 8
        labels = torch.full((len(batch), width), -100)
        for i, row in enumerate(batch):  # answer tokens at the end; position 0 never counts (shifted away)
            if row["n"]:
                labels[i, width - row["n"]:] = 7
        return {"labels": labels}

    assert mean_loss_tokens_per_row(collator, rows, seed=0) == pytest.approx((3 + 1 + 5 + 0) / 4)
    assert mean_loss_tokens_per_row(collator, rows, seed=0, sample_rows=2) in {(a + b) / 2 for a in (3, 1, 5, 0) for b in (3, 1, 5, 0)}
    with pytest.raises(ValueError, match="no training row"):
        mean_loss_tokens_per_row(collator, [{"n": 0}], seed=0)


def fitted_first_token_probability(lengths, is_list, normaliser: str, batch: int = 4, draws: int = 20000) -> float:
    """The P(list) that zeroes the expected gradient of the first answer token's loss over random batches.

    With a batch's loss divided by D (its own token count, or rows x the mean tokens per row), the stationary
    point of the cross-entropy of a shared logit is the D-weighted frequency sum(y / D) / sum(1 / D).
    """
    rng = torch.Generator().manual_seed(0)
    mean_tokens = float(lengths.float().mean())
    weighted_lists = weights = 0.0
    for _ in range(draws):
        idx = torch.randperm(len(lengths), generator=rng)[:batch]
        divisor = float(lengths[idx].sum()) if normaliser == "batch" else batch * mean_tokens
        weighted_lists += float(is_list[idx].sum()) / divisor
        weights += batch / divisor
    return weighted_lists / weights


def test_batch_normalisation_biases_the_decision_and_dataset_normalisation_does_not():
    """Short "No finding" answers (12 tokens) and box lists (51), lists on 45 % of rows, as in the synthetic
    sample: the per-batch token mean fits P(list) well below 0.45; the constant divisor fits 0.45."""
    is_list = torch.tensor([1] * 45 + [0] * 55)
    lengths = torch.where(is_list.bool(), 51, 12)
    frequency = float(is_list.float().mean())
    batch_fit = fitted_first_token_probability(lengths, is_list, "batch")
    dataset_fit = fitted_first_token_probability(lengths, is_list, "dataset")
    assert dataset_fit == pytest.approx(frequency, abs=0.01)
    assert batch_fit < frequency - 0.05
    # With large batches the per-batch count approaches the constant and the bias fades.
    assert fitted_first_token_probability(lengths, is_list, "batch", batch=64, draws=2000) == pytest.approx(frequency, abs=0.02)
