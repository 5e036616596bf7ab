"""Evidence for BSSAN's eq. 8 train/test mismatch: mean branch scores of matched and mismatched
test pairs, with softmax attention (what test time uses) and with uniform attention (what eq. 8
gives the negatives in training).

    python scripts/diagnose_eq8.py --checkpoint runs/flickr8k/bssan --data ../shared/data/flickr8k

If training learned "softmax attention -> high score, uniform -> low" instead of matching, the
matched/softmax and mismatched/softmax rows are close and both far above the uniform rows.

It also prints how peaked the matched pairs' softmax attention is: the largest weight as a multiple
of the uniform weight (1 = uniform), averaged over real words (W2R) or objects (O2W), and for O2W how
much the objects' attention differs (mean over words of the std across objects; 0 = every object
attends alike).
"""

from __future__ import annotations

import argparse

import torch

from itm.checkpoint import load_checkpoint
from itm.data.load import load_dataset
from itm.pipeline import prepare_split
from itm.training.loop import batch_captions


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--pairs", type=int, default=1000)
    args = parser.parse_args(argv)
    ckpt = load_checkpoint(args.checkpoint)
    config = ckpt.config
    test = prepare_split(load_dataset(args.data, "test"), config, ckpt.vocab, progress=False)
    gen = torch.Generator().manual_seed(0)
    caps = torch.randperm(len(test.captions), generator=gen)[: args.pairs]
    owner = torch.as_tensor(test.caption_to_image)
    matched = owner[caps]
    mismatched = (matched + torch.randint(1, len(test.dataset), (len(caps),), generator=gen)) % len(test.dataset)
    model = ckpt.model.eval()
    captions = batch_captions(test.captions, caps)
    with torch.inference_mode():
        words = model.word_vectors(captions)  # the model's own preprocessing, as visual_inputs
        print(f"{'pairs':<12}{'attention':<11}" + "".join(f"{name:>10}" for name in model.branches))
        inputs = {label: model.visual_inputs(test.features.streams(model.image_streams, images))
                  for label, images in (("matched", matched), ("mismatched", mismatched))}
        for label, feats in inputs.items():
            for attention, uniform in (("softmax", None), ("uniform", torch.ones(len(caps), dtype=torch.bool))):
                means = [branch(feats[name], words, captions.lengths, uniform)[0].mean().item()
                         for name, branch in model.branches.items()]
                print(f"{label:<12}{attention:<11}" + "".join(f"{m:>10.3f}" for m in means))
        feats = inputs["matched"]
        real = torch.arange(words.shape[1])[None, :] < captions.lengths[:, None]  # (B, L)
        for name, branch in model.branches.items():
            att = branch(feats[name], words, captions.lengths)[1]
            if name == "w2r":  # (B, L, D): words over regions
                peak = (att.amax(-1) * att.shape[-1])[real]
                print(f"w2r attention (matched): peak / uniform {peak.mean():.2f} (median {peak.median():.2f})")
            else:  # (B, P, L): objects over real words
                peak = att.amax(-1) * captions.lengths[:, None]
                spread = (att.std(dim=1) * real).sum(-1) / real.sum(-1)
                print(f"o2w attention (matched): peak / uniform {peak.mean():.2f}; "
                      f"std across objects {spread.mean():.4f}")


if __name__ == "__main__":
    main()
