"""``itm explain``: attention pictures for a pair, or top-5 retrieval sheets for a query."""

from __future__ import annotations

import argparse
from pathlib import Path

from itm.commands import add_device_argument, add_scoring_set_argument

HELP = "draw every attention map the model declares for a pair, or a query's top-5 retrieval sheet"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    parser.add_argument("--out", required=True, help="folder for the PNGs")
    parser.add_argument("--image", help="pair mode: an image file")
    parser.add_argument("--caption", help="pair mode: the caption text")
    parser.add_argument("--data", help="retrieval mode: a Karpathy-format dataset folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--query-image", help="retrieval mode: image file name in the split -> top-5 captions")
    parser.add_argument("--query-caption", help="retrieval mode: caption text -> top-5 images")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--method", default="concept", choices=["concept", "attention"],
                        help="pair mode: concept (default) also draws where each word's thing is: the backbone's "
                             "ImageNet classifier for the classes the word names, the attention for a word naming "
                             "none (concept.png); attention: the model's maps alone")
    add_scoring_set_argument(parser)
    add_device_argument(parser)


def run(args: argparse.Namespace) -> int:
    from itm.devices import resolve_device
    from itm.errors import ItmError

    args.device = resolve_device(args.device)  # the commands below load onto it
    if args.image or args.caption:
        if not (args.image and args.caption):
            raise ItmError("pair mode needs both --image PATH and --caption TEXT")
        explain_pair_command(args)
    elif args.data and (args.query_image or args.query_caption):
        explain_retrieval_command(args)
    else:
        raise ItmError("give --image PATH --caption TEXT, or --data DIR with --query-image NAME / --query-caption TEXT")
    return 0


def explain_pair_command(args: argparse.Namespace) -> None:
    from itm.checkpoint import load_checkpoint
    from itm.pipeline import cache_root
    from itm.viz.explain import explain_photo
    from itm.viz.render import save_figure

    ckpt = load_checkpoint(args.checkpoint, args.overrides, device=args.device, explaining=True)
    explained = explain_photo(ckpt, args.image, args.caption, cache_root(ckpt.config) / "features",
                              method=args.method)
    explanation, grid = explained.explanation, explained.grid_shape
    parts = ", ".join(f"{k} {v:.3f}" for k, v in explanation.parts.items())
    where = f" on a {grid[0]} x {grid[1]} grid ({explained.image_size} px)" if grid else ""
    print(f"score {explanation.score:.3f}" + (f" ({parts})" if parts else "") + where)
    for note in filter(None, [explained.words.notice(), *explained.drawn.not_drawn]):
        print(f"note: {note}")
    out = Path(args.out)
    for name, fig in explained.drawn.figures.items():
        print(f"wrote {save_figure(fig, out / f'{name}.png')}")


def explain_retrieval_command(args: argparse.Namespace) -> None:
    from itm.checkpoint import load_checkpoint
    from itm.data.encode import encode_captions
    from itm.data.load import load_dataset
    from itm.data.tokenize import tokenize
    from itm.errors import ItmError
    from itm.evaluation.engine import score_all_pairs
    from itm.pipeline import prepare_split, word_vectors
    from itm.viz.explain import (
        LazyImages,
        check_known_words,
        image_array,
        top_captions_figure,
        top_images_figure,
    )
    from itm.viz.render import save_figure

    ckpt = load_checkpoint(args.checkpoint, args.overrides, device=args.device)
    config = ckpt.config
    split = prepare_split(load_dataset(args.data, args.split), config, ckpt.vocab, device=args.device)
    images = split.dataset.images
    out = Path(args.out)
    if args.query_image:
        names = [im.filename for im in images]
        if args.query_image not in names:
            raise ItmError(f"--query-image {args.query_image}: not an image of split '{args.split}' in {args.data}")
        i = names.index(args.query_image)
        row = score_all_pairs(ckpt.model, split.features.select(slice(i, i + 1)), split.captions)[0]
        texts = [" ".join(t) for im in images for t in im.tokens]
        fig = top_captions_figure(row, image_array(images[i].path), texts, split.caption_to_image == i,
                                  k=args.top, title=args.query_image)
        print(f"wrote {save_figure(fig, out / 'top_captions.png')}")
    if args.query_caption:
        tokens = tokenize(args.query_caption)
        notice = check_known_words(tokens, ckpt.vocab, args.query_caption).notice()
        if notice:
            print(f"note: {notice}")
        captions = encode_captions([tokens], ckpt.vocab, config.data.max_words,
                                   word_vectors([tokens], config, progress=False))
        column = score_all_pairs(ckpt.model, split.features, captions)[:, 0]
        truth = next((i for i, im in enumerate(images) if tokens in im.tokens), None)
        fig = top_images_figure(column, args.query_caption, LazyImages([im.path for im in images]), truth,
                                k=args.top, title=None)
        print(f"wrote {save_figure(fig, out / 'top_images.png')}" + ("" if truth is not None else
              " (the caption is not in the split: no image is marked correct)"))
