"""Shared test helpers (a plain module, not a test module): tiny models of any registered name,
random captions and image streams at tiny sizes, a word-vector table of hand-set vectors."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from itm.checkpoint import model_payload, new_model, save_atomic
from itm.config import load_config
from itm.data.glove import table_record
from itm.data.synthetic import synthetic_split
from itm.data.types import Captions, ImageFeatures
from itm.data.vocab import Vocab
from itm.models import MODELS
from itm.models.base import InputDims
from itm.models.objectives import TrainingBatch
from itm.training.loop import Trainer, seed_everything

E, M, Q, D, P, V = 6, 5, 7, 4, 3, 30  # word, region, object dims; regions, objects; vocabulary
DIMS = InputDims(word_dim=E, region_dim=M, object_dim=Q, vocab_size=V)


def tiny_overrides(name: str) -> list[str]:
    """``--set`` overrides that pick ``name`` at the tiny sizes its config class supplies."""
    tiny = MODELS.get(name).config_class.TINY
    return [f"model.name={name}", *(f"model.{key}={value}" for key, value in tiny.items())]


def short_run_overrides(name: str) -> list[str]:
    """``--set`` overrides of ``name``'s short synthetic training run (its config class's ``SHORT_RUN``)."""
    preset = MODELS.get(name).config_class.SHORT_RUN
    return [f"model.name={name}", *(f"{key}={value}" for key, value in preset.items())]


def tiny_config(name: str, *overrides: str):
    return load_config(None, [*tiny_overrides(name), *overrides])


def tiny_model(name: str, *overrides: str, seed: int = 0):
    config = tiny_config(name, *overrides)
    torch.manual_seed(seed)
    return new_model(config, DIMS), config


def make_captions(lengths: list[int], width: int | None = None, seed: int = 0) -> Captions:
    """Random word ids 1..V-1 at real positions, 0 (padding) after each caption's length."""
    gen = torch.Generator().manual_seed(seed)
    width = width or max(lengths)
    ids = torch.randint(1, V, (len(lengths), width), generator=gen)
    lengths_t = torch.tensor(lengths)
    ids[torch.arange(width)[None, :] >= lengths_t[:, None]] = 0
    return Captions(ids, lengths_t)


def make_features(n: int, seed: int = 1, half: bool = False) -> ImageFeatures:
    gen = torch.Generator().manual_seed(seed)
    regions, objects = torch.randn(n, D, M, generator=gen), torch.randn(n, P, Q, generator=gen)
    if half:
        regions, objects = regions.half(), objects.half()
    return ImageFeatures(regions, objects)


def make_images(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    features = make_features(n, seed)
    return features.regions, features.objects


def streams(regions: torch.Tensor, objects: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every image stream of the given regions and objects (what ``ImageFeatures.streams`` gives)."""
    return ImageFeatures(regions, objects).streams(("regions", "objects", "whole"))


def randomise_non_weights(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial batch-norm statistics/affines and scalar biases (defaults hide mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=gen))
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                module.weight.copy_(torch.randn(n, generator=gen))
                module.bias.copy_(torch.randn(n, generator=gen))
        for name, param in model.named_parameters():
            if name.endswith(".bias") and param.dim() == 0:
                param.fill_(0.3)


def engine_model(name: str, *overrides: str):
    """(tiny model in eval mode with ``randomise_non_weights``, its config): the engine's exactness tests'."""
    model, config = tiny_model(name, *overrides)
    randomise_non_weights(model)
    return model.eval(), config


ENGINE_LENGTHS = [4, 1, 7, 3, 7, 2, 5, 3, 6]  # unsorted, ties, a single word; 9 captions


def engine_data(lengths=ENGINE_LENGTHS, n_images: int = 5, seed: int = 0, vectors: bool = False):
    """(ImageFeatures in float16 as cached, Captions with extra padding columns the engine must trim or
    ignore; with ``vectors``, precomputed float16 word vectors too)."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths) + 2
    ids = torch.randint(1, V, (len(lengths), width), generator=gen)
    lengths_t = torch.tensor(lengths)
    pad = torch.arange(width)[None, :] >= lengths_t[:, None]
    ids[pad] = 0
    vecs = None
    if vectors:
        vecs = torch.randn(len(lengths), width, E, generator=gen).half()
        vecs[pad] = 0
    features = ImageFeatures(torch.randn(n_images, D, M, generator=gen).half(),
                             torch.randn(n_images, P, Q, generator=gen).half())
    return features, Captions(ids, lengths_t, vecs)


def set_mixed_modes(model: torch.nn.Module) -> None:
    """Training, except the batch norms (a caller freezing their statistics)."""
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.eval()


def tiny_batch(model, n_images: int = 4, per_image: int = 2, loss: str = "infonce") -> TrainingBatch:
    """A training step over random data: captions 2k, 2k+1 belong to image k."""
    regions, objects = make_images(n_images)
    lengths = [3, 5, 1, 4, 2, 6, 2, 3][: n_images * per_image]
    captions = make_captions(lengths)
    owner = torch.arange(n_images).repeat_interleave(per_image)
    cfg = load_config(None, [f"train.loss={loss}"]).train

    def inputs(images, caps):
        picked = captions.select(caps)
        return streams(regions[images], objects[images]), picked

    return TrainingBatch(torch.arange(len(owner)), owner, cfg, torch.Generator().manual_seed(0), inputs)


# -- a tiny training run on synthetic data ----------------------------------------------------------

DIM = 16


def setup_run(run_dir: Path, *overrides: str, seed: int = 0, n_train: int = 256, n_val: int = 32,
              model_overrides: list[str] | None = None, device: str = "cpu"):
    """A tiny model (BSSAN unless ``model_overrides`` picks another) on ``device``, its Trainer, and
    train/val splits of one synthetic problem (val held out)."""
    train, vocab = synthetic_split(n_train, seed=seed, region_dim=DIM)
    val, _ = synthetic_split(n_val, seed=seed + 100, vocab=vocab, region_dim=DIM)
    model_part = short_run_overrides("bssan") if model_overrides is None else model_overrides
    config = load_config(None, ["train.optimizer=adam", "train.lr=0.02", "train.batch_size=32", "train.epochs=2",
                                "train.patience=10", f"train.seed={seed}", "eval.memory_budget_mb=64", *model_part,
                                *overrides])
    dims = InputDims(word_dim=DIM, region_dim=DIM, object_dim=DIM, vocab_size=len(vocab))
    seed_everything(config.train.seed)
    model = new_model(config, dims).to(device)
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(model, config, run_dir,
                      lambda: model_payload(model, config, vocab, dims, {"backbone": "synthetic"}))
    return trainer, train, val


def fit_quietly(trainer: Trainer, train, val) -> dict:
    with contextlib.redirect_stdout(io.StringIO()):
        return trainer.fit(train, val, progress=False)


# -- photo folders and checkpoints for search -------------------------------------------------------

FEATURES = ["features.backbone=efficientnet_lite0", "features.image_size=64", "features.num_objects=3"]
WORDS = ["a", "red", "green", "blue", "square", "dog", "photo"]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "grey": (128, 128, 128),
           "yellow": (230, 220, 20), "teal": (20, 160, 160)}


def index_checkpoint(path: Path, name: str, seed: int = 0, overrides: tuple[str, ...] = (),
                     open_vocabulary: bool = False) -> Path:
    """A tiny checkpoint of ``name`` on Lite0 64 px features (search and service tests); with
    ``open_vocabulary`` it names the shipped 50-d GloVe table (its words then read any GloVe word),
    else it is a checkpoint of before the open vocabulary (closed)."""
    config = load_config(None, [*tiny_overrides(name), *FEATURES, *overrides])
    torch.manual_seed(seed)
    dims = InputDims(word_dim=50, region_dim=1280, object_dim=1280, vocab_size=len(WORDS) + 2)
    model = new_model(config, dims)
    settings = {"backbone": "efficientnet_lite0", "image_size": 64, "num_objects": 3, "proposals": "activation",
                "weights": None}
    word_table = table_record(None) if open_vocabulary else None
    save_atomic(model_payload(model, config, Vocab.build([WORDS]), dims, settings, word_table), path)
    return path


def photo(path: Path, colour: str, size=(48, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, COLOURS[colour]).save(path)
    return path


def boxed_photos(root: Path) -> tuple[Path, Path]:
    """A Karpathy folder of two red photos captioned "a red square" and a COCO boxes file whose one
    box, "square", covers the whole first photo: any pointing at that photo hits, and the second
    photo gives no case. Returns (data folder, boxes file)."""
    import json

    data, names = root / "data", ["a.jpg", "b.jpg"]
    for name in names:
        photo(data / "images" / name, "red", size=(80, 60))
    sentences = [{"raw": "a red square", "tokens": ["a", "red", "square"]}]
    (data / "dataset_boxes.json").write_text(json.dumps(
        {"images": [{"filename": n, "split": "test", "sentences": sentences} for n in names]}))
    boxes = {"images": [{"id": i, "file_name": n, "width": 80, "height": 60} for i, n in enumerate(names)],
             "categories": [{"id": 1, "name": "square"}],
             "annotations": [{"image_id": 0, "category_id": 1, "bbox": [0, 0, 80, 60], "iscrowd": 0}]}
    (root / "boxes.json").write_text(json.dumps(boxes))
    return data, root / "boxes.json"


def photo_folder(photos: Path) -> Path:
    """Five photos (nested folders, JPEG / PNG / WebP) and three bad files: a text file named .jpg,
    a JPEG cut inside its header, an empty PNG; and a non-image file."""
    for colour in ["red", "green", "blue"]:
        photo(photos / f"{colour}.jpg", colour)
    photo(photos / "nested" / "deeper" / "grey.png", "grey")
    photo(photos / "yellow.webp", "yellow")
    (photos / "notes.jpg").write_text("not an image")
    (photos / "cut.jpg").write_bytes((photos / "red.jpg").read_bytes()[:100])  # issue 23: cut inside the header
    (photos / "empty.png").write_bytes(b"")
    (photos / "readme.txt").write_text("ignored: not an image suffix")
    return photos


def served_index(root: Path):
    """A tiny index (5 photos, a dual shortlist and a BSSAN re-ranker) and a caption collection under
    ``root``; returns its Searcher. The caller sets ITM_CACHE."""
    from itm.retrieval.index import IndexStore, index_captions, update_index
    from itm.retrieval.search import Searcher, SearchModels

    models = SearchModels(index_checkpoint(root / "dual.pt", "dual"), index_checkpoint(root / "bssan.pt", "bssan"))
    store = IndexStore(root / "idx")
    update_index(store, photo_folder(root / "photos"), models, progress=False)
    (root / "captions.txt").write_text("a red square\n\na green photo\na blue dog\na square\n")
    index_captions(store, root / "captions.txt", models)
    return Searcher(root / "idx")


# -- kill -9 at a chosen point of a child process, whatever the machine's speed ---------------------

KILL_SWITCH = '''
import importlib, os, signal

def _arm(module_name, qualified, when):
    module = importlib.import_module(module_name)
    owner_name, method_name = qualified.split(".")
    owner = getattr(module, owner_name)
    real = getattr(owner, method_name)

    def killed(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        if eval(when, {"os": os}, {"self": self, "args": args, "result": result}):
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, method_name, killed)

_arm(MODULE, QUALIFIED, WHEN)
'''


def kill_switch(folder: Path, target: str, when: str = "True", env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (None: this process's) for a child Python process that SIGKILLs itself right after ``target``
    (``package.module:Class.method``) returns while the expression ``when`` (over ``self``, ``args``,
    ``result``, ``os``) holds: the kill lands at that point on any machine, not after a guessed sleep.
    Works through a ``sitecustomize`` module on the child's PYTHONPATH."""
    import os

    module, qualified = target.split(":")
    folder.mkdir(parents=True, exist_ok=True)
    code = KILL_SWITCH.replace("MODULE", repr(module)).replace("QUALIFIED", repr(qualified)).replace("WHEN", repr(when))
    (folder / "sitecustomize.py").write_text(code)
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), env.get("PYTHONPATH", "")) if p)
    return env


# -- a word-vector table of hand-set vectors --------------------------------------------------------

class WordTable:
    """A word-vector table of a few hand-set vectors with the GloVe table's interface (``word in
    table``, ``table.vectors(words)``): GloVe's stand-in where a test needs known neighbours."""

    def __init__(self, rows: dict[str, list[float]]):
        self.rows = {w: np.asarray(v, np.float32) for w, v in rows.items()}

    def __contains__(self, word: str) -> bool:
        return word in self.rows

    def vectors(self, words: list[str]) -> np.ndarray:
        """(len(words), dim) float32, in the order asked."""
        return np.stack([self.rows[w] for w in words]).reshape(len(words), -1)
