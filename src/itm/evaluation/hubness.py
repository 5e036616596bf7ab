"""Hubness: how unevenly text queries spread over photos, and the published corrections.

Raw cross-attention scores are not comparable across photos: a cluttered photo scores high for many
captions and answers a large share of all queries (a *hub*). Measured on text -> photo rankings:

- ``n_k_skewness``: the skewness of N_k, the number of queries whose top k holds each photo
  (Radovanovic et al., JMLR 2010; k = 10: "N10 skewness"); 0 for an even spread;
- ``top1_share``: the largest share of queries one photo is the top hit of;
- ``never_in_top_k``: the share of photos that are in no query's top k (the other side of hubs).

The corrections score each photo once against a fixed *bank* of captions that are never queries
(``bank``: (n_photos, n_bank) scores) and rank a query's photos by a normalised score:

- ``csls`` (Conneau et al., ICLR 2018): ``2 s - r(photo)``, r the mean of the photo's k best bank scores;
- ``is`` (inverted softmax, Smith et al., ICLR 2017): ``beta s - log sum_b exp(beta bank_b)``, the log
  of the query's score over the photo's partition function across the bank;
- ``dis`` (QB-Norm's dynamic inverted softmax, Bogolin et al., CVPR 2022): inverted softmax only for a
  query whose raw top photo is in the *activation set* (photos that are the top hit of at least one bank
  caption); other queries keep their raw scores.

A bank is either fixed (the first ``bank_size`` captions of the shipped bank, the same for every photo:
what ``itm eval --normalise`` uses) or each photo's own (``neighbours``: the photo's m nearest captions
of a 30,000-caption pool by the shortlist model, scored by the re-rankers: what search uses, since a
fixed Flickr8k bank does not describe photos unlike Flickr8k's and inverts their correction).

All functions here are pure: matrices in (photos as rows, queries as columns), matrices out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHODS = ("none", "csls", "is", "dis")


@dataclass(frozen=True)
class Normalisation:
    """A method and its parameter: ``k`` (csls: the bank neighbours averaged) or ``beta`` (is, dis:
    the inverse temperature); ``bank_size``: the fixed bank's first captions used; ``neighbours``: each
    photo's own bank of its m nearest pool captions instead (None: the fixed bank)."""

    method: str = "none"
    beta: float = 20.0
    k: int = 10
    bank_size: int | None = None
    neighbours: int | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"normalisation: method must be one of {', '.join(METHODS)}, not {self.method!r}")

    def label(self) -> str:
        parameter = {"csls": f" k={self.k}", "is": f" beta={self.beta:g}", "dis": f" beta={self.beta:g}"}
        bank = f", bank {self.bank_size}" if self.bank_size else ""
        if self.neighbours:
            bank = f", each photo's {self.neighbours} nearest pool captions"
        return f"{self.method}{parameter.get(self.method, '')}{bank}"

    def to_dict(self) -> dict:
        return {"method": self.method, "beta": self.beta, "k": self.k, "bank_size": self.bank_size,
                "neighbours": self.neighbours}


# each method's parameters, chosen on the dev sets (Flickr8k val and coco_boxes_dev, never test) among
# banks of at most 500 captions, what a photo's index time affords (scripts/hubness_dev.py,
# results/hubness/dev_grid.json, docs/results/search.md "Hub photos")
DEFAULTS = {"none": Normalisation(), "csls": Normalisation("csls", k=10, bank_size=500),
            "is": Normalisation("is", beta=10.0, bank_size=500), "dis": Normalisation("dis", beta=10.0, bank_size=500)}
# search's corrections, on each photo's own bank (its nearest pool captions): chosen on the same dev sets by
# the same rule (scripts/hubness_dev.py --stage neighbours, results/hubness/dev_grid_neighbours.json); inverted
# softmax over a photo's own nearest captions over-corrects (N10 skewness above 9 on Flickr8k val), so search
# offers csls alone; "none": raw scores
SEARCH_METHODS = {"none": Normalisation(), "csls": Normalisation("csls", k=5, neighbours=32)}
SEARCH_DEFAULT = "csls"  # what search applies unless told not to
# the shortlist's own correction (search applies it with any method but "none"): its bank scores are inner
# products of vectors, free at any bank size; chosen by the shortlist's mean R@50 on the same dev sets
# (scripts/hubness_dev.py --stage shortlist, results/hubness/dev_grid_shortlist.json)
SHORTLIST_DEFAULT = Normalisation("csls", k=10, bank_size=2000)


@dataclass(frozen=True)
class PhotoStats:
    """What a correction needs of each photo's bank scores, computed once, only what its method reads
    (the rest None): ``neighbours`` (n,) the mean of its k best (csls), ``log_partition`` (n,) log sum
    exp(beta bank) (is, dis), ``activated`` (n,) bool: the top photo of at least one bank caption among
    the photos these statistics were computed over (dis)."""

    neighbours: np.ndarray | None = None
    log_partition: np.ndarray | None = None
    activated: np.ndarray | None = None

    def select(self, rows) -> PhotoStats:
        """The statistics of the photos ``rows`` (indices into the photos they were computed over)."""
        return PhotoStats(*(None if part is None else part[rows]
                            for part in (self.neighbours, self.log_partition, self.activated)))


def photo_stats(bank: np.ndarray, norm: Normalisation) -> PhotoStats:
    """(n_photos, n_bank) bank scores -> the statistics ``normalise`` uses with ``norm`` (its first
    ``bank_size`` columns)."""
    bank = np.asarray(bank, dtype=np.float32)[:, : norm.bank_size or None]
    n, width = bank.shape
    if norm.method == "csls":
        k = min(norm.k, width)
        top = -np.partition(-bank, k - 1, axis=1)[:, :k] if k else np.zeros((n, 1))  # (n, k), unordered
        return PhotoStats(neighbours=top.mean(1, dtype=np.float64))
    if norm.method not in ("is", "dis"):
        return PhotoStats()
    scaled = norm.beta * bank.astype(np.float64)
    peak = scaled.max(1, keepdims=True) if width else np.zeros((n, 1))
    log_partition = peak[:, 0] + np.log(np.exp(scaled - peak).sum(1)) if width else np.zeros(n)
    activated = None
    if norm.method == "dis":
        activated = np.zeros(n, dtype=bool)
        if width and n:
            activated[np.unique(bank.argmax(0))] = True
    return PhotoStats(log_partition=log_partition, activated=activated)


def normalise(scores: np.ndarray, stats: PhotoStats, norm: Normalisation) -> np.ndarray:
    """(n_photos, n_queries) scores -> normalised scores of the same shape (float32); ranking each
    column (a query's photos) by them is the correction. ``stats`` are the same photos' (rows')."""
    scores = np.asarray(scores, dtype=np.float64)
    if norm.method == "none":
        out = scores
    elif norm.method == "csls":
        out = 2 * scores - stats.neighbours[:, None]
    else:
        inverted = norm.beta * scores - stats.log_partition[:, None]
        if norm.method == "is":
            out = inverted
        else:  # dis: only the queries whose raw top photo is a hub of the bank
            hub_query = stats.activated[scores.argmax(0)] if len(scores) else np.zeros(scores.shape[1], bool)
            # a column keeps one scale: its raw scores, or its inverted-softmax scores
            out = np.where(hub_query[None, :], inverted, scores)
    return out.astype(np.float32)


def rank_offsets(stats: PhotoStats, norm: Normalisation) -> np.ndarray:
    """(n,) a term per photo such that ranking a query's photos by ``s - offset`` ranks them as
    ``normalise`` does: csls (r / 2) and is (log partition / beta), whose change of a score depends on
    the photo alone; so a correction folds into an inner-product index as one more dimension."""
    if norm.method == "csls":
        return stats.neighbours / 2
    if norm.method == "is":
        return stats.log_partition / norm.beta
    raise ValueError(f"rank_offsets: {norm.method!r} is not a per-photo offset (csls or is)")


def hubness(scores: np.ndarray, k: int = 10) -> dict[str, float]:
    """Hubness figures of text -> photo rankings: ``scores`` (n_photos, n_queries), each column ranked."""
    n_photos, n_queries = scores.shape
    k = min(k, n_photos)
    top = np.argpartition(-scores, k - 1, axis=0)[:k]  # (k, n_queries): each query's top k, unordered
    return _figures(np.bincount(top.reshape(-1), minlength=n_photos), np.bincount(scores.argmax(0), minlength=n_photos),
                    n_queries, k)


def hubness_from_lists(top_k: list[list[int]], n_photos: int) -> dict[str, float]:
    """The same figures from ranked lists (a search's top-k photo ids, ids in 0..n_photos-1, best first)."""
    counts = np.bincount([i for hits in top_k for i in hits], minlength=n_photos)
    first = np.bincount([hits[0] for hits in top_k if hits], minlength=n_photos)
    return _figures(counts, first, len(top_k), max((len(h) for h in top_k), default=0))


def _figures(counts: np.ndarray, first: np.ndarray, n_queries: int, k: int) -> dict[str, float]:
    """``counts`` (n_photos,) N_k, ``first`` (n_photos,) how many queries each photo is the top hit of."""
    return {"k": int(k), "n_k_skewness": round(skewness(counts.astype(np.float64)), 4),
            "top1_share": round(float(first.max()) / n_queries, 4) if n_queries else 0.0,
            "never_in_top_k": round(float((counts == 0).mean()), 4),
            "queries": int(n_queries), "photos": int(len(counts))}


def skewness(values: np.ndarray) -> float:
    """The (population) skewness E[(x - mu)^3] / sigma^3; 0 for constant values."""
    centred = values - values.mean()
    sigma = np.sqrt((centred**2).mean())
    return float((centred**3).mean() / sigma**3) if sigma > 0 else 0.0
