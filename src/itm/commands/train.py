"""``itm train``: train a matcher on a Karpathy-format or precomp dataset."""

from __future__ import annotations

import argparse

from itm.commands import add_device_argument
from itm.config import RECOMMENDED_CONFIG

HELP = f"train a model (default: the recommended config, {RECOMMENDED_CONFIG}); --resume continues a run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=RECOMMENDED_CONFIG,
                        help=f"YAML file or name in configs/ (default: {RECOMMENDED_CONFIG}, the recommended config, "
                        "as itm demo; bssan_cpu is the paper's objective)")
    parser.add_argument("--data", help="dataset folder (Karpathy JSON + images, or SCAN precomp)")
    parser.add_argument("--out", help="run folder to create")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set model.w2r_hidden=256 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_device_argument(parser)  # bf16: --set train.precision=bf16


def run(args: argparse.Namespace) -> int:
    from itm.config import load_config
    from itm.devices import resolve_device
    from itm.errors import ItmError
    from itm.training.run import train_run

    device = resolve_device(args.device)
    if args.resume:
        if args.data or args.out:
            raise ItmError("--resume takes its data and run folder from RUN_DIR: drop --data and --out")
        train_run(None, None, args.resume, resume=True, progress=not args.no_progress,
                  resume_overrides=args.overrides, device=device)
        return 0
    if not args.data or not args.out:
        raise ItmError("itm train needs --data DIR and --out RUN_DIR (or --resume RUN_DIR)")
    config = load_config(args.config, args.overrides)
    train_run(config, args.data, args.out, progress=not args.no_progress, device=device,
              source={"config": args.config, "overrides": list(args.overrides)})
    return 0
