"""Training objectives over a model's scores, shared by every matcher's ``training_loss``.

Two kinds, chosen by ``train.loss``:

- siamese (``pairwise_hinge``, BSSAN eq. 7/17): each positive pair against ``train.negatives``
  sampled unmatched captions, all scored as aligned pairs in one ``forward``;
- in-batch (``infonce``, ``vse_hardest``): the B x B block of the batch's images and captions,
  scored through ``prepare_images`` / ``prepare_captions`` / ``score_block``.

A model that scores its negatives differently in training (BSSAN's eq. 8 uniform attention) or
weighs its parts passes its own ``aligned`` / ``block`` scorers and part weights; the others use
the defaults, the total score with weight 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from itm.data.types import Captions
from itm.losses import LOSSES, distillation
from itm.registry import Registry

Parts = dict[str, torch.Tensor]
# (image streams, captions, negative/positive mask) -> named score parts
AlignedScorer = Callable[[dict, Captions, torch.Tensor], Parts]


@dataclass
class TrainingBatch:
    """One training step's data, as the trainer hands it to ``Matcher.training_loss``."""

    caps: torch.Tensor  # (B,) caption indices (into the split) of this step
    owner: torch.Tensor  # (n_captions,) the image index of every caption of the split
    cfg: object  # itm.config.TrainConfig
    gen: torch.Generator  # the loop's saved generator: negatives and augmentation draw from it
    # (image indices, caption indices) -> (image streams, captions): the model's inputs, augmented
    inputs: Callable[[torch.Tensor, torch.Tensor], tuple[dict, Captions]]
    share: slice | None = None  # under torchrun: this process's rows of the global batch
    # (image streams, captions) of the global batch -> (B, B) the teachers' logits (train.distill_from)
    teacher: Callable[[dict, Captions], torch.Tensor] | None = None
    # (image streams, captions) of matched pairs -> a scalar training term on the model's attention
    # (train.concept_weight: itm.training.grounding.ConceptGrounding)
    grounding: Callable[[dict, Captions], torch.Tensor] | None = None

    @property
    def images(self) -> torch.Tensor:
        return self.owner[self.caps]  # (B,)

    def my_rows(self) -> torch.Tensor:
        """Indices into the global batch of the rows this process scores (all of them in one process)."""
        return torch.arange(len(self.caps))[self.share or slice(None)]


def sample_negatives(owner: torch.Tensor, images: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k caption indices per row whose image differs from ``images`` (B,): (B, k)."""
    neg = torch.randint(len(owner), (len(images), k), generator=gen)
    clash = owner[neg] == images[:, None]
    while clash.any():  # rare: redraw only the clashing ones
        neg[clash] = torch.randint(len(owner), (int(clash.sum()),), generator=gen)
        clash = owner[neg] == images[:, None]
    return neg


def siamese_objective(batch: TrainingBatch, aligned: AlignedScorer, block: AlignedScorer,
                      weights: dict[str, float]) -> torch.Tensor:
    """Eq. 7 + 17: each positive pair against sampled unmatched captions; ``aligned`` gets a (B+B*K,)
    mask that is True on the negatives."""
    cfg, caps = batch.cfg, batch.caps
    images = batch.images  # (B,)
    neg = sample_negatives(batch.owner, images, cfg.negatives, batch.gen)  # (B, K)
    all_images = torch.cat([images, images.repeat(cfg.negatives)])  # (B + B*K,)
    all_caps = torch.cat([caps, neg.t().reshape(-1)])  # negatives laid out (K, B)
    negative = torch.arange(len(all_caps)) >= len(caps)
    # every process draws the whole global batch's inputs (random state stays in step), then keeps
    # its positives and their negatives; the gradient average over processes is the global mean
    streams, captions = batch.inputs(all_images, all_caps)
    mine = batch.my_rows()
    b = len(mine)
    rows = torch.cat([mine, *(len(caps) * (k + 1) + mine for k in range(cfg.negatives))])
    # indices and masks join the inputs on the model's device (sampling stays on the CPU generator)
    rows, negative = rows.to(captions.ids.device), negative.to(captions.ids.device)
    parts = aligned({k: v[rows] for k, v in streams.items()}, captions.select(rows), negative[rows])
    hinge = LOSSES.get("pairwise_hinge")
    return sum(weights.get(name, 1.0) * hinge(s[:b], s[b:].view(cfg.negatives, b).t(), cfg.margin)
               for name, s in parts.items())


IN_BATCH_PARAMETER = {"infonce": "temperature", "vse_hardest": "margin"}  # the TrainConfig field each reads


def in_batch_objective(batch: TrainingBatch, aligned: AlignedScorer, block: AlignedScorer,
                       weights: dict[str, float]) -> torch.Tensor:
    """InfoNCE / VSE++ over the B x B block; ``block`` gets the (B, B) mask of matched pairs
    (captions of the same image included), which the losses keep out of the negatives."""
    images = batch.images  # (B,)
    positives = images[:, None] == images[None, :]  # (B, B)
    streams, captions = batch.inputs(images, batch.caps)
    positives = positives.to(captions.ids.device)  # the losses' mask lives with the scores
    mine = batch.my_rows().to(captions.ids.device)
    # this process scores its images against every caption of the global batch; the rows of all
    # processes are gathered (autograd-aware), so the loss sees the whole global batch's negatives
    parts = block({k: v[mine] for k, v in streams.items()}, captions, positives[mine])
    parts = {name: gather_rows_with_grad(part) for name, part in parts.items()}  # (B, B) each
    loss_fn = LOSSES.get(batch.cfg.loss)
    extra = getattr(batch.cfg, IN_BATCH_PARAMETER[batch.cfg.loss])
    loss = sum(weights.get(name, 1.0) * loss_fn(s, positives, extra) for name, s in parts.items())
    if batch.teacher is not None:  # the ensemble's in-batch distributions as soft targets
        target = batch.teacher(streams, captions)  # (B, B), no gradient
        loss = loss + batch.cfg.distill_weight * sum(
            weights.get(name, 1.0) * distillation(s, target, batch.cfg.temperature) for name, s in parts.items())
    if batch.grounding is not None:  # the batch's images and captions are matched pairs, row by row
        loss = loss + batch.grounding({k: v[mine] for k, v in streams.items()}, captions.select(mine))
    return loss


def gather_rows_with_grad(part: torch.Tensor) -> torch.Tensor:
    """Every process's rows in rank order, gradients flowing back to each process's own rows. With
    the gradient average over processes, the step equals one process's on the whole global batch."""
    from itm.distributed import world_size

    if world_size() == 1:
        return part
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(part))


OBJECTIVES: Registry = Registry("training objective")
OBJECTIVES.add("pairwise_hinge", siamese_objective, "sampled negatives, aligned pairs")
OBJECTIVES.add("infonce", in_batch_objective, "in-batch B x B block")
OBJECTIVES.add("vse_hardest", in_batch_objective, "in-batch B x B block")


def objective_loss(model, batch: TrainingBatch, aligned: AlignedScorer | None = None,
                   block: AlignedScorer | None = None, weights: dict[str, float] | None = None) -> torch.Tensor:
    """The configured objective on ``model``'s scores (by default its total score, weight 1)."""
    if aligned is None:
        def aligned(images, captions, negative):
            return {"total": model(images, captions).score}
    if block is None:
        def block(images, captions, positives):
            return {"total": model.score_block(model.prepare_images(images), model.prepare_captions(captions))}
    return OBJECTIVES.get(batch.cfg.loss)(batch, aligned, block, weights or {})
