"""PyTorch MedKLIP: knowledge-enhanced entity existence from chest X-rays.

Image path: a ResNet (`TimmWrapperModel`) gives its last feature map `(B, C, h, w)`; the `h * w` positions are the
image patches, each linearly projected to `hidden_size` (`patch_projection`).

Knowledge path: the text encoder (a BERT, frozen by default) reads the description of every entity and of every
anatomical position (token ids held in the config); the `[CLS]` embedding of each description is projected to
`hidden_size` by `text_projection`, the same linear layer for entities and positions.

Fusion: a pre-norm transformer decoder; the queries are the projected entity descriptions, the memory the projected
patches. Per entity the output gives an existence logit (`existence_head`) and a position representation
(`position_head`), compared by cosine similarity with the projected position descriptions. The head-averaged
cross-attention of every layer over the patches is returned as `(B, entities, h, w)` maps (grounding heatmaps).

Losses (`MedKLIPModel.forward` with `labels`):
* `L_cls`: binary cross-entropy of the existence logits, averaged over the known answers only: a label of -1 (the
  entity was uncertain or not mentioned in the report) is masked out and never trained;
* `L_pos`: position InfoNCE, for every present entity (label 1) and every one of its true positions: the true
  position's similarity against the similarities of the entity's non-true positions (other true positions of the
  same entity are left out of the denominator), `-log(exp(s_p) / (exp(s_p) + sum_negatives exp(s_n)))`, averaged
  over those (image, entity, position) terms; 0 when a batch has none;
* `L_sem`: `1 - cos(h, g)` with `h = semantic_head(mean of the entity outputs)` and `g` the text encoder's `[CLS]`
  embedding of the report, averaged over the rows that have a report;
* total `L_cls + position_loss_weight * L_pos + semantic_loss_weight * L_sem`.

Shipped as remote code next to the weights: imports only torch, transformers and the sibling configuration file.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import ModelOutput

try:
    from .configuration_medklip import MedKLIPConfig
except ImportError:  # imported as a plain module (tests, repo scripts)
    from configuration_medklip import MedKLIPConfig


@dataclass
class MedKLIPOutput(ModelOutput):
    """Outputs of [`MedKLIPModel`].

    Args:
        loss: `L_cls + a1 L_pos + a2 L_sem` (when `labels` are given).
        logits: `(B, entities)` existence logits; `sigmoid(logits)` is P(present).
        position_logits: `(B, entities, positions)` cosine similarities / temperature between each entity's position
            representation and each projected position description.
        cross_attentions: with `output_attentions=True`, one `(B, entities, h, w)` map per decoder layer: the
            head-averaged attention of each entity query over the image patches (rows sum to 1).
        entity_hidden_states: `(B, entities, hidden_size)` decoder outputs.
        loss_cls / loss_pos / loss_sem: the three terms (None when their inputs were not given).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    position_logits: torch.Tensor | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    entity_hidden_states: torch.Tensor | None = None
    loss_cls: torch.Tensor | None = None
    loss_pos: torch.Tensor | None = None
    loss_sem: torch.Tensor | None = None


# ============================================================================================== losses


def existence_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over the known answers (`labels` 1 or 0); entries labelled -1 are masked out.

    A batch without any known answer gives a zero that keeps the graph.
    """
    known = labels >= 0
    if not bool(known.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[known].float(), labels[known].float())


def position_contrastive_loss(
    position_logits: torch.Tensor, position_labels: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Multi-positive InfoNCE over positions (see the module docstring).

    Args:
        position_logits: `(B, E, P)` similarities (already divided by the temperature).
        position_labels: `(B, E, P)` 1 where the report places entity `e` at position `p`.
        labels: `(B, E)` existence labels; only present entities (1) contribute.
    """
    positives = position_labels.bool() & (labels == 1).unsqueeze(-1)
    if not bool(positives.any()):
        return position_logits.sum() * 0.0
    scores = position_logits.float()
    negatives = scores.masked_fill(position_labels.bool(), float("-inf"))
    negative_lse = torch.logsumexp(negatives, dim=-1, keepdim=True)  # -inf when every position is a true one
    per_positive = torch.logaddexp(scores, negative_lse) - scores  # -log softmax over {p} + negatives
    return per_positive[positives].mean()


def semantic_consistency_loss(
    predicted: torch.Tensor, report_embeddings: torch.Tensor, has_report: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of `1 - cos(predicted, report)` over the rows with a report (`has_report`, default all)."""
    if has_report is None:
        has_report = torch.ones(predicted.shape[0], dtype=torch.bool, device=predicted.device)
    if not bool(has_report.any()):
        return predicted.sum() * 0.0
    cosine = F.cosine_similarity(predicted[has_report].float(), report_embeddings[has_report].float(), dim=-1)
    return (1.0 - cosine).mean()


# ============================================================================================== modules


class MedKLIPDecoderLayer(nn.Module):
    """Pre-norm transformer decoder layer: self-attention among the entity queries, cross-attention to the image
    patches (its head-averaged weights are returned), feed-forward."""

    def __init__(self, config: MedKLIPConfig):
        super().__init__()
        width, heads = config.hidden_size, config.decoder_attention_heads
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=config.dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(width, heads, dropout=config.dropout, batch_first=True)
        self.self_attn_norm = nn.LayerNorm(width)
        self.cross_attn_norm = nn.LayerNorm(width)
        self.ffn_norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, config.decoder_ffn_dim)
        self.fc2 = nn.Linear(config.decoder_ffn_dim, width)
        self.activation = ACT2FN[config.decoder_activation]
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.self_attn_norm(queries)
        queries = queries + self.dropout(self.self_attn(hidden, hidden, hidden, need_weights=False)[0])
        hidden = self.cross_attn_norm(queries)
        attended, weights = self.cross_attn(hidden, memory, memory, need_weights=True, average_attn_weights=True)
        queries = queries + self.dropout(attended)
        hidden = self.ffn_norm(queries)
        queries = queries + self.dropout(self.fc2(self.dropout(self.activation(self.fc1(hidden)))))
        return queries, weights


class MedKLIPPreTrainedModel(PreTrainedModel):
    config_class = MedKLIPConfig
    config: MedKLIPConfig
    base_model_prefix = "medklip"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = False
    _no_split_modules = ["MedKLIPDecoderLayer", "BertLayer"]

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """Load as usual, then re-freeze the text encoder: loading resets `requires_grad`."""
        model = super().from_pretrained(*args, **kwargs)
        if isinstance(model, MedKLIPModel) and model.config.freeze_text_encoder:
            model.freeze_text_encoder()
        return model


class MedKLIPModel(MedKLIPPreTrainedModel):
    """ResNet image encoder + frozen BERT knowledge encoder + entity-query fusion decoder with existence, position
    and semantic heads (see the module docstring)."""

    def __init__(self, config: MedKLIPConfig):
        super().__init__(config)
        config.validate_knowledge(require_tokens=True)
        self.vision_model = AutoModel.from_config(config.vision_config)
        self.text_model = AutoModel.from_config(config.text_config, add_pooling_layer=False)
        vision_width = int(self.vision_model.timm_model.num_features)
        text_width = int(config.text_config.hidden_size)
        self.patch_projection = nn.Linear(vision_width, config.hidden_size)
        self.text_projection = nn.Linear(text_width, config.hidden_size)
        self.layers = nn.ModuleList(MedKLIPDecoderLayer(config) for _ in range(config.decoder_layers))
        self.decoder_norm = nn.LayerNorm(config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.existence_head = nn.Linear(config.hidden_size, 1)
        self.position_head = nn.Linear(config.hidden_size, config.hidden_size)
        self.semantic_head = nn.Linear(config.hidden_size, text_width)
        if config.freeze_text_encoder:
            self.freeze_text_encoder()
        self.post_init()
        self._restore_timm_init()

    def _restore_timm_init(self) -> None:
        """Give a freshly built ResNet timm's own initialisation back (He-normal convolutions, the last BatchNorm scale
        of every block at zero). transformers' generic init sets every convolution to N(0, 0.02) and every BatchNorm
        scale to 1: in eval mode such a random ResNet shrinks its input about 6x per convolution (the tiny preset's
        features were ~1e-6, every image gave the same output). Loaded weights replace either init."""
        reset = getattr(self.vision_model.timm_model, "init_weights", None)
        if callable(reset):
            reset()

    # ------------------------------------------------------------------------------------ text encoder
    def freeze_text_encoder(self, frozen: bool = True) -> None:
        """Fix (or release) the text encoder's weights; a frozen encoder also stays in eval mode."""
        self.text_model.requires_grad_(not frozen)
        if frozen:
            self.text_model.eval()

    @property
    def text_encoder_trainable(self) -> bool:
        return any(p.requires_grad for p in self.text_model.parameters())

    def train(self, mode: bool = True):
        """Keep a frozen text encoder in eval mode (no dropout) while the rest trains."""
        super().train(mode)
        if not self.text_encoder_trainable:
            self.text_model.eval()
        return self

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`[CLS]` embeddings `(N, text_hidden)` of tokenised texts (gradients only into a trainable encoder)."""
        with torch.set_grad_enabled(self.text_encoder_trainable and torch.is_grad_enabled()):
            hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden[:, 0]

    def _padded_token_ids(self, sequences: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        pad = self.config.text_config.pad_token_id or 0
        length = max(len(ids) for ids in sequences)
        input_ids = torch.full((len(sequences), length), pad, dtype=torch.long, device=device)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long, device=device)
        for row, ids in enumerate(sequences):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long, device=device)
            attention_mask[row, : len(ids)] = 1
        return input_ids, attention_mask

    def knowledge_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Text-encoder `[CLS]` embeddings of the entity descriptions `(E, text_hidden)` and of the position
        descriptions `(P, text_hidden)`, from the token ids held in the config."""
        device = self.text_projection.weight.device
        sequences = self.config.entity_token_ids + self.config.position_token_ids
        embeddings = self.encode_text(*self._padded_token_ids(sequences, device))
        return embeddings[: self.config.num_entities], embeddings[self.config.num_entities :]

    # ------------------------------------------------------------------------------------ image encoder
    def get_image_features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Projected patches `(B, h * w, hidden_size)` of the last feature map, and its grid `(h, w)`."""
        dtype = next(self.vision_model.parameters()).dtype
        feature_map = self.vision_model(pixel_values=pixel_values.to(dtype)).last_hidden_state
        if feature_map.dim() != 4:
            raise ValueError(f"the vision encoder returned a tensor of shape {tuple(feature_map.shape)}; MedKLIP needs a "
                             "convolutional feature map (B, C, h, w): use a ResNet with do_pooling=False")
        height, width = feature_map.shape[-2:]
        patches = feature_map.flatten(2).transpose(1, 2)  # (B, h*w, C), raster order
        return self.patch_projection(patches), (height, width)

    # ------------------------------------------------------------------------------------ forward
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        position_labels: torch.Tensor | None = None,
        report_input_ids: torch.Tensor | None = None,
        report_attention_mask: torch.Tensor | None = None,
        has_report: torch.Tensor | None = None,
        output_attentions: bool = False,
        return_dict: bool = True,
        **kwargs,
    ) -> MedKLIPOutput:
        r"""
        pixel_values: `(B, 3, H, W)` normalised images.
        labels: `(B, E)` existence 1 / 0, or -1 for an unknown answer (masked out of `L_cls`).
        position_labels: `(B, E, P)` 1 at the positions the report gives a present entity (for `L_pos`).
        report_input_ids / report_attention_mask: `(B, T)` the tokenised report (for `L_sem`); `has_report` `(B,)`
            marks the rows that have one (default: all).
        """
        patches, (height, width) = self.get_image_features(pixel_values)
        entity_text, position_text = self.knowledge_embeddings()
        queries = self.text_projection(entity_text.to(patches.dtype)).unsqueeze(0).expand(patches.shape[0], -1, -1)
        attentions = []
        for layer in self.layers:
            queries, weights = layer(queries, patches)
            attentions.append(weights.reshape(weights.shape[0], weights.shape[1], height, width))
        entities = self.dropout(self.decoder_norm(queries))
        logits = self.existence_head(entities).squeeze(-1)
        position_repr = F.normalize(self.position_head(entities), dim=-1)
        position_keys = F.normalize(self.text_projection(position_text.to(patches.dtype)), dim=-1)
        position_logits = position_repr @ position_keys.T / self.config.position_temperature

        loss = loss_cls = loss_pos = loss_sem = None
        if labels is not None:
            loss_cls = existence_loss(logits, labels)
            loss = loss_cls
            if position_labels is not None and self.config.num_positions:
                loss_pos = position_contrastive_loss(position_logits, position_labels, labels)
                loss = loss + self.config.position_loss_weight * loss_pos
            if report_input_ids is not None:
                report_embeddings = self.encode_text(report_input_ids, report_attention_mask)
                predicted = self.semantic_head(entities.mean(dim=1))
                loss_sem = semantic_consistency_loss(predicted, report_embeddings.to(predicted.dtype), has_report)
                loss = loss + self.config.semantic_loss_weight * loss_sem
        output = MedKLIPOutput(
            loss=loss,
            logits=logits,
            position_logits=position_logits,
            cross_attentions=tuple(attentions) if output_attentions else None,
            entity_hidden_states=entities,
            loss_cls=loss_cls,
            loss_pos=loss_pos,
            loss_sem=loss_sem,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "MedKLIPDecoderLayer",
    "MedKLIPModel",
    "MedKLIPOutput",
    "MedKLIPPreTrainedModel",
    "existence_loss",
    "position_contrastive_loss",
    "semantic_consistency_loss",
]
