"""`litegpt_train.trainer`: learning rate per parameter role and the dataset-constant loss normaliser."""

from __future__ import annotations

import pytest
import torch

from litegpt_train.trainer import mean_loss_tokens_per_row, split_param_groups_by_role


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


def test_split_gives_each_role_its_rate_and_keeps_weight_decay():
    model = TinyVLM()
    names = {id(p): n for n, p in model.named_parameters()}
    optimizer = split_param_groups_by_role(trainer_style_optimizer(model), names, {"projector": 1e-2, "vision": 5e-4})
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
    names = {id(p): n for n, p in model.named_parameters()}
    optimizer = split_param_groups_by_role(trainer_style_optimizer(model), names, {"projector": 1e-2})
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    model.multi_modal_projector(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    rates = {names[id(g["params"][0])].split(".")[0]: g["lr"] for g in optimizer.param_groups}
    assert rates["multi_modal_projector"] == pytest.approx(5e-3)
    assert rates["q_proj"] == pytest.approx(5e-4)


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
