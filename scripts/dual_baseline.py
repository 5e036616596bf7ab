"""The plain dual encoder the calibration note measured, on any cached backbone: the yardstick BSSAN
must beat with the same image features.

Text: GloVe-initialised trainable embeddings -> GRU-512, last real state. Image: mean of the region
grid -> linear 512. Both L2-normalised; symmetric InfoNCE (temperature 0.05), Adam, batch 128.
Validation rsum on 1,000 val images after every epoch, best state kept, a wall-clock budget; then
the 1K test by the standard protocol (itm.evaluation.metrics).

    OMP_NUM_THREADS=1 python scripts/dual_baseline.py --data ../shared/data/flickr8k \
        --backbone efficientnet_lite2 --image-size 260 --minutes 10 --json results/flickr8k/dual_lite2.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from itm.config import FeatureConfig
from itm.data.encode import encode_captions
from itm.data.glove import load_glove
from itm.data.load import load_dataset
from itm.data.vocab import Vocab
from itm.evaluation.metrics import format_table, retrieval_metrics
from itm.features.extract import extract_features

MAX_WORDS = 30  # as the BSSAN configs (data.max_words)


class DualEncoder(nn.Module):
    def __init__(self, embeddings: torch.Tensor, image_dim: int, dim: int = 512):
        super().__init__()
        self.embed = nn.Embedding.from_pretrained(embeddings, freeze=False, padding_idx=0)
        self.gru = nn.GRU(embeddings.shape[1], dim, batch_first=True)
        self.image = nn.Linear(image_dim, dim)

    def encode_images(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(pooled.float()), dim=-1)  # (B, dim)

    def encode_captions(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(ids), lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        _, last = self.gru(packed)  # (1, B, dim): the state after each caption's last real word
        return F.normalize(last[0], dim=-1)


def pooled_features(data: str, split: str, settings: FeatureConfig):
    dataset = load_dataset(data, split)
    feats, kept, _ = extract_features(dataset, settings, progress=False)
    return feats.regions.float().mean(dim=1), kept  # (N, 1280)


@torch.no_grad()
def score_matrix(model: DualEncoder, pooled: torch.Tensor, ids, lengths) -> np.ndarray:
    model.eval()
    images = model.encode_images(pooled)  # (N, dim)
    captions = torch.cat([model.encode_captions(ids[i:i + 1000], lengths[i:i + 1000])
                          for i in range(0, len(ids), 1000)])  # (5N, dim)
    return (images @ captions.T).numpy()  # (N, 5N)


def encoded(dataset, vocab: Vocab, max_words: int):
    tokens, owner = dataset.caption_tokens()
    caps = encode_captions(tokens, vocab, max_words)
    return caps.ids, caps.lengths, owner


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the test metrics here (itm eval --json keys)")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    settings = FeatureConfig(backbone=args.backbone, image_size=args.image_size)

    train_pooled, train = pooled_features(args.data, "train", settings)
    val_pooled, val = pooled_features(args.data, "val", settings)
    test_pooled, test = pooled_features(args.data, "test", settings)
    vocab = Vocab.build(train.caption_tokens()[0])
    embeddings, _ = load_glove(vocab.words, seed=args.seed)
    train_ids, train_lengths, train_owner = encoded(train, vocab, MAX_WORDS)
    val_data, test_data = encoded(val, vocab, MAX_WORDS), encoded(test, vocab, MAX_WORDS)

    model = DualEncoder(embeddings, train_pooled.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    best, best_state, epoch, started = -1.0, None, 0, time.perf_counter()
    history = []
    while time.perf_counter() - started < args.minutes * 60:
        epoch += 1
        model.train()
        order = rng.permutation(len(train_ids))
        for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
            rows = torch.from_numpy(order[start:start + args.batch_size])
            images = model.encode_images(train_pooled[train_owner[rows.numpy()]])  # (B, dim)
            captions = model.encode_captions(train_ids[rows], train_lengths[rows])  # (B, dim)
            logits = images @ captions.T / 0.05  # (B, B); a photo twice in a batch is rare, ignored
            target = torch.arange(len(rows))
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if time.perf_counter() - started > args.minutes * 60:
                break
        rsum = retrieval_metrics(score_matrix(model, val_pooled, *val_data[:2]), val_data[2])["rsum"]
        history.append({"epoch": epoch, "val_rsum": round(rsum, 1), "elapsed": round(time.perf_counter() - started)})
        print(history[-1], flush=True)
        if rsum > best:
            best, best_state = rsum, copy.deepcopy(model.state_dict())
    train_seconds = time.perf_counter() - started
    model.load_state_dict(best_state)
    scoring = time.perf_counter()
    metrics = retrieval_metrics(score_matrix(model, test_pooled, *test_data[:2]), test_data[2])
    scoring = time.perf_counter() - scoring
    print(format_table(metrics, title=f"dual encoder, {args.backbone} {args.image_size}px, {len(test)}-image test"))
    if args.json:
        record = {**metrics, "n_images": len(test), "n_captions": len(test_data[2]), "seconds": round(scoring, 2),
                  "protocol": "flickr", "checkpoint": f"scripts/dual_baseline.py --backbone {args.backbone}",
                  "model": "dual_gru512 (baseline script, not a registered model)",
                  "training": {"train_seconds": round(train_seconds, 1), "epochs": epoch,
                               "threads": torch.get_num_threads(), "history": history}}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
    return metrics


if __name__ == "__main__":
    main()
