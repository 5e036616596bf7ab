"""Does the model read words it never saw? Retrieval split by caption vocabulary, and a concept probe.

Pure functions over a score matrix and token lists (the model is run by the caller):

- ``recall_by_vocabulary``: captions split into those whose every word was in the training captions
  ("seen") and those with at least one other word ("unseen"); text-to-image R@K of each group's
  captions, and image-to-text R@K with each group's captions as the only candidates (an image with
  no caption in a group is left out of it).
- ``concept_probe``: for each unseen word that occurs in the captions of two or more photos, the
  query "a WORD" ranks the photos; recall@5 is the share of those photos in its top 5, beside the
  expected recall of a random ranking (5 / n_images).
- ``with_concept_evidence``: text queries as search ranks them with ``concepts`` on: each caption's
  column plus the photos' ImageNet evidence for its unseen words that name classes.
"""

from __future__ import annotations

import numpy as np

KS = (1, 5, 10)
PROBE_K = 5


def has_unseen_word(token_lists: list[list[str]], seen: set[str], max_words: int) -> np.ndarray:
    """(n_captions,) bool: the caption (as the model reads it, cut at ``max_words``) has a word
    outside ``seen``."""
    return np.array([any(t not in seen for t in tokens[:max_words]) for tokens in token_lists], dtype=bool)


def _recalls(ranks: np.ndarray) -> dict[str, float]:
    """R@K (percent) of 0-based ranks of the first right answer."""
    return {f"r{k}": float(100 * np.mean(ranks < k)) if ranks.size else float("nan") for k in KS}


def t2i_ranks(scores: np.ndarray, caption_to_image: np.ndarray) -> np.ndarray:
    """(n_captions,) 0-based rank of each caption's image among all images."""
    right = scores[caption_to_image, np.arange(scores.shape[1])]  # (n_cap,)
    return (scores > right[None, :]).sum(0)


def i2t_ranks(scores: np.ndarray, caption_to_image: np.ndarray) -> np.ndarray:
    """(n_images with a caption,) 0-based rank of each image's best-ranked own caption."""
    ranks = []
    for image in np.unique(caption_to_image):
        own = caption_to_image == image
        best = scores[image, own].max()
        ranks.append(int((scores[image, ~own] > best).sum()))
    return np.asarray(ranks, dtype=np.int64)


def recall_by_vocabulary(scores: np.ndarray, caption_to_image: np.ndarray, unseen: np.ndarray) -> dict:
    """R@K both ways for the "seen" and "unseen" caption groups (``unseen`` from ``has_unseen_word``)."""
    out = {}
    for group, mask in (("seen", ~unseen), ("unseen", unseen)):
        owners = caption_to_image[mask]
        block = scores[:, mask]  # (n_img, group captions)
        out[group] = {"captions": int(mask.sum()), "images": int(np.unique(owners).size),
                      "t2i": _recalls(t2i_ranks(block, owners) if mask.any() else np.zeros(0)),
                      "i2t": _recalls(i2t_ranks(block, owners) if mask.any() else np.zeros(0))}
    return out


def probe_words(token_lists: list[list[str]], caption_to_image: np.ndarray, seen: set[str],
                min_photos: int = 2) -> dict[str, np.ndarray]:
    """Unseen word -> the photos (indices) whose captions hold it, for words in ``min_photos`` or more."""
    photos: dict[str, set[int]] = {}
    for tokens, image in zip(token_lists, caption_to_image, strict=True):
        for word in set(tokens) - seen:
            photos.setdefault(word, set()).add(int(image))
    return {w: np.array(sorted(p)) for w, p in sorted(photos.items()) if len(p) >= min_photos}


def concept_probe(scores: np.ndarray, relevant: list[np.ndarray], words: list[str], k: int = PROBE_K) -> dict:
    """``scores`` (n_images, n_words): each probe query "a WORD" against every photo; ``relevant``:
    the photos naming each word. Recall@k per word, its mean, and a random ranking's mean (k / n)."""
    n_images = scores.shape[0]
    per_word = {}
    for column, (word, photos) in enumerate(zip(words, relevant, strict=True)):
        top = np.argsort(-scores[:, column], kind="stable")[:k]
        per_word[word] = {"photos": int(photos.size), "recall": float(100 * np.isin(photos, top).mean())}
    recalls = [v["recall"] for v in per_word.values()]
    return {"words": len(per_word), "k": k, "recall": float(np.mean(recalls)) if recalls else float("nan"),
            "chance": float(100 * min(k, n_images) / n_images) if n_images else float("nan"),
            "per_word": per_word}


def with_concept_evidence(scores: np.ndarray, token_lists: list[list[str]], seen: set[str], max_words: int,
                          evidence) -> tuple[np.ndarray, np.ndarray]:
    """(n_images, n_captions) scores with each caption's column re-ranked as a text query is in search
    (``itm.features.concepts.with_evidence``) by ``evidence(words) -> (n_images,) | None`` of its words
    outside ``seen``; and (n_captions,) bool: the captions so changed. Columns are text queries only:
    image-to-text rankings are not defined on this matrix."""
    from itm.features.concepts import with_evidence

    out, changed = scores.copy(), np.zeros(scores.shape[1], dtype=bool)
    for c, tokens in enumerate(token_lists):
        unseen = [t for t in dict.fromkeys(tokens[:max_words]) if t not in seen]
        found = evidence(unseen) if unseen else None
        if found is not None:
            out[:, c], changed[c] = with_evidence(scores[:, c], found), True
    return out, changed


def t2i_by_vocabulary(scores: np.ndarray, caption_to_image: np.ndarray, unseen: np.ndarray) -> dict:
    """Text-to-image R@K of all, "seen" and "unseen" captions."""
    ranks = t2i_ranks(scores, caption_to_image)
    return {group: {"captions": int(mask.sum()), "t2i": _recalls(ranks[mask])}
            for group, mask in (("all", np.ones_like(unseen)), ("seen", ~unseen), ("unseen", unseen))}


def r1_gain_interval(before: np.ndarray, after: np.ndarray, caption_to_image: np.ndarray, mask: np.ndarray,
                     samples: int = 2000, seed: int = 0) -> list[float]:
    """95% interval of the change in t2i R@1 (points) of the ``mask`` captions, from a bootstrap over
    photos (a photo's captions go together); ``before``/``after``: their 0-based t2i ranks."""
    rng = np.random.default_rng(seed)
    owners = caption_to_image[mask]
    gained = ((after[mask] < 1).astype(float) - (before[mask] < 1))
    photos = np.unique(owners)
    if not photos.size:
        return [float("nan"), float("nan")]
    per_photo = np.array([[gained[owners == p].sum(), (owners == p).sum()] for p in photos])  # (P, 2)
    picks = rng.integers(0, photos.size, size=(samples, photos.size))
    sums = per_photo[picks].sum(1)  # (samples, 2)
    low, high = np.percentile(100 * sums[:, 0] / sums[:, 1], [2.5, 97.5])
    return [float(low), float(high)]
