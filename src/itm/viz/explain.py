"""From a model and prepared data to the paper's pictures (section V-D, Fig. 5-8).

The drawing functions in ``attention`` and ``sheets`` are pure; this module runs the model to get
the real attention and rankings, then calls them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure

from itm.data.types import Captions, ImageFeatures
from itm.data.vocab import Vocab
from itm.errors import ItmError
from itm.features.images import load_image
from itm.models.base import Matcher, PairScores
from itm.viz.attention import object_word_figure, word_attention_figure
from itm.viz.sheets import captions_sheet, images_sheet


@dataclass
class PairExplanation:
    """A pair's score, its parts and its attention, for the real words only."""

    words: list[str]
    score: float
    parts: dict[str, float]
    attention: dict[str, np.ndarray]  # "w2r": (L, D); "o2w": (P, L)


def check_known_words(tokens: list[str], vocab: Vocab, caption: str) -> None:
    if not tokens:
        raise ItmError(f"caption {caption!r} has no words")
    if all(vocab.encode([t])[0] == Vocab.UNK_ID for t in tokens) and vocab.words:
        raise ItmError(f"caption {caption!r}: none of its words is in the model's vocabulary")


@torch.inference_mode()
def explain_pair(model: Matcher, features: ImageFeatures, image_index: int, captions: Captions,
                 caption_index: int, tokens: list[str]) -> PairExplanation:
    """Run one pair through the model's forward with attention maps returned."""
    model.eval()
    one = captions.select(slice(caption_index, caption_index + 1))
    n = int(one.lengths[0])
    one = Captions(one.ids[:, :n], one.lengths, None if one.vectors is None else one.vectors[:, :n])
    out: PairScores = model(features.regions[image_index : image_index + 1],
                            features.objects[image_index : image_index + 1], one, return_attention=True)
    attention = {name: att[0].float().numpy() for name, att in out.attention.items()}
    return PairExplanation(tokens[:n], float(out.score[0]), {k: float(v[0]) for k, v in out.parts.items()},
                           attention)


def image_array(path) -> np.ndarray:
    """The image as (H, W, 3) uint8, at its original size (boxes are in its pixels)."""
    return np.asarray(load_image(path).convert("RGB"))


def pair_figures(explanation: PairExplanation, image: np.ndarray, features: ImageFeatures,
                 image_index: int, title: str = "") -> dict[str, Figure]:
    """W2R word panels and the O2W object chart, for whichever branches the model has."""
    figures = {}
    if "w2r" in explanation.attention:
        att = explanation.attention["w2r"]  # (L, D)
        # each panel is min-max scaled to be visible, so say how peaked the attention really is
        labels = [f"{w}\npeak {row.max() * att.shape[1]:.1f}x uniform" for w, row in zip(explanation.words, att,
                                                                                          strict=True)]
        figures["w2r"] = word_attention_figure(image, att, labels,
                                               score=explanation.score, parts=explanation.parts,
                                               grid_shape=features.grid_shape, title=title or None)
    if "o2w" in explanation.attention and features.boxes is not None:
        boxes = features.boxes[image_index].float().numpy()  # (P, 4) in the image's pixels
        figures["o2w"] = object_word_figure(image, boxes, explanation.attention["o2w"], explanation.words,
                                            score=explanation.score, parts=explanation.parts,
                                            title=title or None)
    return figures


def top_captions_figure(row: np.ndarray, image: np.ndarray, caption_texts: list[str], correct: np.ndarray,
                        k: int = 5, title: str | None = None) -> Figure:
    """Paper Fig. 5: an image and its top-k captions; ``row`` (n_captions,) its scores, ``correct``
    (n_captions,) bool marks its ground-truth captions."""
    top = np.argsort(-row, kind="stable")[:k]
    return captions_sheet(image, [caption_texts[c] for c in top], [float(row[c]) for c in top],
                          [bool(correct[c]) for c in top], title=title)


def top_images_figure(column: np.ndarray, caption_text: str, images, truth: int | None, k: int = 5,
                      title: str | None = None) -> Figure:
    """Paper Fig. 6: a caption and its top-k images; ``column`` (n_images,) its scores, ``truth`` the
    correct image (None: unknown). ``images`` is indexed like ``column``; only the top-k are read."""
    top = np.argsort(-column, kind="stable")[:k]
    return images_sheet(caption_text, [images[int(i)] for i in top], [float(column[i]) for i in top],
                        [truth is not None and int(i) == truth for i in top], title=title)


class LazyImages:
    """Images of a dataset, loaded only when indexed (a sheet shows five of thousands)."""

    def __init__(self, paths: list):
        self.paths = paths

    def __getitem__(self, index: int) -> np.ndarray:
        return image_array(self.paths[index])

    def __len__(self) -> int:
        return len(self.paths)
