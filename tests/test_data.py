"""Tests for mape.data.datasets: local folders, embedded corpora, hub loading and subsampling."""

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mape.base.errors import MapeError
from mape.data.datasets import Dataset, Split, load_bbc, load_folder, load_hub_dataset, load_mnist, subsample_train

DATA_DIR = Path(os.environ.get("MAPE_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def shared(name: str) -> Path:
    path = DATA_DIR / name
    if not path.is_dir():
        pytest.skip(f"{path} is not present")
    return path


@pytest.fixture(scope="module")
def bbc():
    return load_bbc()


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


# ---------------------------------------------------------------- Split / Dataset


def test_split_take_list_and_array():
    s = Split(["a", "b", "c"], np.array([0, 1, 2]))
    t = s.take(np.array([2, 0]))
    assert t.x == ["c", "a"] and t.y.tolist() == [2, 0] and len(t) == 2
    a = Split(np.arange(12, dtype=np.uint8).reshape(3, 2, 2), np.array([0, 1, 0]))
    b = a.take(np.array([1]))
    assert b.x.shape == (1, 2, 2) and b.x[0, 0, 0] == 4


def test_class_index_and_counts():
    ds = Dataset("t", "text", ["World", "Sports", "Sci/Tech"], Split(["x"], np.array([0])),
                 Split(["y"], np.array([0])))
    assert ds.class_index("sports") == 1
    assert ds.class_index("Sci/Tech") == 2
    assert ds.class_index(2) == 2
    assert ds.class_index(np.int64(1)) == 1
    assert ds.class_index(" 0 ") == 0
    for bad in ("nope", 3, "-1", True):
        with pytest.raises(MapeError, match="World, Sports, Sci/Tech"):
            ds.class_index(bad)
    assert ds.class_counts(np.array([0, 0, 2])) == {"World": 2, "Sports": 0, "Sci/Tech": 1}


# ---------------------------------------------------------------- embedded corpora


def test_bbc(bbc):
    assert bbc.modality == "text"
    assert bbc.classes == ["business", "entertainment", "politics", "sport", "tech"]
    assert len(bbc.train) + len(bbc.test) == 2225
    assert (len(bbc.train), len(bbc.test)) == (1781, 444)
    total = {c: bbc.class_counts(bbc.train.y)[c] + bbc.class_counts(bbc.test.y)[c] for c in bbc.classes}
    assert total == {"business": 510, "entertainment": 386, "politics": 417, "sport": 511, "tech": 401}
    assert all(isinstance(t, str) and t and "\n" not in t and "  " not in t for t in bbc.train.x)
    assert bbc.train.y.dtype == np.int64


def test_bbc_deterministic(bbc):
    again = load_bbc(seed=0)
    assert again.train.x == bbc.train.x and np.array_equal(again.test.y, bbc.test.y)
    other = load_bbc(seed=1)
    assert other.train.x != bbc.train.x
    assert len(load_bbc(test_fraction=0.5).test) == 1112


def test_bbc_bad_fraction():
    with pytest.raises(MapeError, match="test_fraction"):
        load_bbc(test_fraction=1.5)


def test_mnist(mnist):
    assert mnist.modality == "image"
    assert mnist.classes == [str(i) for i in range(10)]
    assert len(mnist.train) + len(mnist.test) == 5000
    assert mnist.train.x.shape == (4000, 28, 28) and mnist.train.x.dtype == np.uint8
    assert mnist.test.x.shape == (1000, 28, 28)
    assert mnist.train.x.max() == 255
    assert set(mnist.class_counts(mnist.test.y).values()) == {100}
    again = load_mnist()
    assert np.array_equal(again.train.x, mnist.train.x)


# ---------------------------------------------------------------- shared real data


def test_sst2_shared():
    path = shared("sst2")
    t = time.perf_counter()
    ds = load_folder(path)
    assert time.perf_counter() - t < 2.0
    assert ds.name == "sst2" and ds.modality == "text"
    assert ds.classes == ["negative", "positive"]
    assert (len(ds.train), len(ds.test)) == (67349, 872)
    assert any("'" in t for t in ds.train.x)
    assert ds.train.x[0].startswith("hide new secretions")


def test_ag_news_shared():
    ds = load_folder(shared("ag_news"))
    assert ds.classes == ["World", "Sports", "Business", "Sci/Tech"]
    assert (len(ds.train), len(ds.test)) == (10001, 7600)
    assert any('"' in t for t in ds.train.x)  # quotes are kept as text (QUOTE_NONE)
    assert set(np.unique(ds.test.y)) == {0, 1, 2, 3}


def test_local_preset_data_folder_is_the_one_named(tmp_path, monkeypatch):
    """--data (or MAPE_DATA_DIR) may name the data folder itself or the folder holding it; when one is
    named, it is the only place looked at, and a wrong one is named in the message."""
    from mape.data.presets import PRESETS

    sst2 = PRESETS["minilm-sst2"]
    path = shared("sst2")
    monkeypatch.delenv("MAPE_DATA_DIR", raising=False)
    assert sst2.data_dir(str(path)) == path
    assert sst2.data_dir(str(path.parent)) == path.parent / "sst2"
    monkeypatch.setenv("MAPE_DATA_DIR", str(path.parent))
    assert sst2.data_dir(None) == path.parent / "sst2"
    # a folder that exists but holds other data: not found there, even though shared/data has it
    (tmp_path / "agnews").mkdir()
    assert sst2.data_dir(str(tmp_path)) is None
    assert sst2.availability(str(tmp_path)) == (
        False, f"the data folder '{tmp_path}' (--data) has neither train/test files nor a 'sst2' subfolder")
    monkeypatch.setenv("MAPE_DATA_DIR", str(tmp_path / "missing"))
    assert sst2.availability(None) == (
        False, f"the data folder '{tmp_path / 'missing'}' (MAPE_DATA_DIR) does not exist")


# ---------------------------------------------------------------- folder formats


def test_tsv_quotes_and_string_labels(tmp_path):
    (tmp_path / "train.tsv").write_text(
        'text\tlabel\n"a quote at the start\tpos\nhe said "hi" twice\tneg\nit \'s fine\tpos\n'
    )
    (tmp_path / "validation.tsv").write_text('text\tlabel\n" lone\tneg\n')
    ds = load_folder(tmp_path, name="mine")
    assert ds.name == "mine" and ds.classes == ["neg", "pos"]
    assert ds.train.x == ['"a quote at the start', 'he said "hi" twice', "it 's fine"]
    assert ds.train.y.tolist() == [1, 0, 1] and ds.test.x == ['" lone']


def test_csv_int_labels_and_class_args(tmp_path):
    pd.DataFrame({"text": ["a, b", "0042", "c"], "label": [0, 2, 1]}).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame({"text": ["d"], "label": [2]}).to_csv(tmp_path / "test.csv", index=False)
    ds = load_folder(tmp_path)
    assert ds.classes == ["0", "1", "2"] and ds.train.x == ["a, b", "0042", "c"]
    assert load_folder(tmp_path, classes=["x", "y", "z"]).classes == ["x", "y", "z"]
    (tmp_path / "classes.txt").write_text("red\ngreen\nblue\n")
    assert load_folder(tmp_path, classes=["x", "y", "z"]).classes == ["red", "green", "blue"]


def test_custom_columns(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\ty\nhello\t1\nbye\t0\n")
    (tmp_path / "test.tsv").write_text("sentence\ty\nhey\t1\n")
    ds = load_folder(tmp_path, text_col="sentence", label_col="y")
    assert ds.train.x == ["hello", "bye"] and ds.test.y.tolist() == [1]


def test_jsonl_text_and_pixel_lists(tmp_path):
    rows = [{"text": "x", "label": "b"}, {"text": "y", "label": "a"}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "test.jsonl").write_text(json.dumps({"text": "z", "label": "a"}))
    ds = load_folder(tmp_path)
    assert ds.classes == ["a", "b"] and ds.train.y.tolist() == [1, 0]

    img = tmp_path / "img"
    img.mkdir()
    pix = [[[0, 255], [128, 3]], [[1, 2], [3, 4]]]
    (img / "train.jsonl").write_text("\n".join(json.dumps({"image": p, "label": i}) for i, p in enumerate(pix)))
    (img / "test.jsonl").write_text(json.dumps({"image": [0.0, 1.0, 0.5, 0.0], "label": 1}))
    ds = load_folder(img)
    assert ds.modality == "image" and ds.train.x.dtype == np.uint8 and ds.train.x.shape == (2, 2, 2)
    assert ds.train.x[0].tolist() == [[0, 255], [128, 3]]
    assert ds.test.x[0].tolist() == [[0, 255], [128, 0]]  # floats in 0..1 are scaled


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_parquet_image_bytes(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(3, 4, 4, 3), dtype=np.uint8)
    pd.DataFrame({"image": [_png(a) for a in imgs], "label": [0, 1, 0]}).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame({"image": [{"bytes": _png(imgs[1]), "path": None}], "label": [1]}).to_parquet(
        tmp_path / "test.parquet")
    ds = load_folder(tmp_path, classes=["cat", "dog"])
    assert ds.modality == "image" and ds.train.x.shape == (3, 4, 4, 3)
    assert np.array_equal(ds.train.x, imgs) and np.array_equal(ds.test.x[0], imgs[1])
    assert ds.classes == ["cat", "dog"]


def test_parquet_text_is_deterministic(tmp_path):
    pd.DataFrame({"text": ["a", "b"], "label": [1, 0]}).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame({"text": ["c"], "label": [0]}).to_parquet(tmp_path / "test.parquet")
    a, b = load_folder(tmp_path), load_folder(tmp_path)
    assert a.train.x == b.train.x == ["a", "b"] and a.classes == ["0", "1"]


# ---------------------------------------------------------------- folder errors


def _write(folder: Path, train: str, test: str = "text\tlabel\nz\t0\n"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.tsv").write_text(train)
    (folder / "test.tsv").write_text(test)
    return folder


def test_folder_errors(tmp_path):
    with pytest.raises(MapeError, match="does not exist"):
        load_folder(tmp_path / "missing")
    with pytest.raises(MapeError, match="No train file"):
        load_folder(tmp_path)
    (tmp_path / "train.tsv").write_text("text\tlabel\na\t0\n")
    with pytest.raises(MapeError, match="No test file"):
        load_folder(tmp_path)

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.parquet").write_bytes(b"not a parquet file")
    (bad / "test.parquet").write_bytes(b"nope")
    with pytest.raises(MapeError, match="Cannot read .*train.parquet"):
        load_folder(bad)

    with pytest.raises(MapeError, match="no 'text' or 'image' column; its columns are words, label"):
        load_folder(_write(tmp_path / "c1", "words\tlabel\na\t0\n"))
    with pytest.raises(MapeError, match="no 'label' label column; its columns are text, tag"):
        load_folder(_write(tmp_path / "c2", "text\ttag\na\t0\n"))
    with pytest.raises(MapeError, match="test.tsv has no 'label'"):
        load_folder(_write(tmp_path / "c3", "text\tlabel\na\t0\n", "text\nq\n"))

    f = _write(tmp_path / "c4", "text\tlabel\na\t0\nb\t2\n")
    (f / "labels.txt").write_text("neg\npos\n")
    with pytest.raises(MapeError, match="Label 2 in train.tsv is outside the class list"):
        load_folder(f)
    with pytest.raises(MapeError, match="outside the class list"):
        load_folder(_write(tmp_path / "c5", "text\tlabel\na\t-1\n"))
    with pytest.raises(MapeError, match="'maybe' in train.tsv is not in the class list"):
        load_folder(_write(tmp_path / "c6", "text\tlabel\na\tmaybe\n", "text\tlabel\nz\tyes\n"), classes=["no", "yes"])
    with pytest.raises(MapeError, match="empty"):
        load_folder(_write(tmp_path / "c7", "text\tlabel\na\t\n"))
    with pytest.raises(MapeError, match="Cannot decode the images"):
        f = tmp_path / "c8"
        f.mkdir()
        pd.DataFrame({"image": [b"garbage"], "label": [0]}).to_parquet(f / "train.parquet")
        pd.DataFrame({"image": [b"garbage"], "label": [0]}).to_parquet(f / "test.parquet")
        load_folder(f)


# ---------------------------------------------------------------- hub loading (local)


def _hub_folder(tmp_path: Path) -> Path:
    import datasets
    from datasets import ClassLabel, Features, Value

    feats = Features({"sentence": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    folder = tmp_path / "hubdata"
    folder.mkdir()
    datasets.Dataset.from_dict({"sentence": ["good", "bad", "fine"], "label": [1, 0, 1]},
                               features=feats).to_parquet(str(folder / "train.parquet"))
    datasets.Dataset.from_dict({"sentence": ["meh"], "label": [0]},
                               features=feats).to_parquet(str(folder / "validation.parquet"))
    return folder


def test_hub_local_parquet(tmp_path):
    folder = _hub_folder(tmp_path)
    ds = load_hub_dataset(str(folder))
    assert ds.name == "hubdata" and ds.modality == "text"
    assert ds.classes == ["neg", "pos"]
    assert ds.train.x == ["good", "bad", "fine"] and ds.train.y.tolist() == [1, 0, 1]
    assert ds.test.x == ["meh"]
    with pytest.raises(MapeError, match="no 'test' split; its splits are"):
        load_hub_dataset(str(folder), test_split="test")
    with pytest.raises(MapeError, match="no input column 'text'.*sentence, label"):
        load_hub_dataset(str(folder), text_col="text")
    with pytest.raises(MapeError, match="no label column 'y'"):
        load_hub_dataset(str(folder), label_col="y")


def test_hub_local_images_data_dir(tmp_path):
    import datasets
    from datasets import ClassLabel, Features, Image

    feats = Features({"img": Image(), "label": ClassLabel(names=["dark", "light"])})
    rng = np.random.default_rng(1)
    arrs = rng.integers(0, 256, size=(4, 5, 5), dtype=np.uint8)
    data = tmp_path / "imgs" / "data"
    data.mkdir(parents=True)
    for split, sl in (("train", slice(0, 3)), ("test", slice(3, 4))):
        rows = {"img": [{"bytes": _png(a), "path": None} for a in arrs[sl]], "label": [0, 1, 0, 1][sl]}
        datasets.Dataset.from_dict(rows, features=feats).to_parquet(str(data / f"{split}-00000-of-00001.parquet"))
    ds = load_hub_dataset(str(tmp_path / "imgs"), name="digits")
    assert ds.name == "digits" and ds.modality == "image" and ds.classes == ["dark", "light"]
    assert ds.train.x.dtype == np.uint8 and np.array_equal(ds.train.x, arrs[:3])
    assert np.array_equal(ds.test.x, arrs[3:]) and ds.test.y.tolist() == [1]


def test_hub_offline(monkeypatch):
    import datasets

    def boom(*a, **k):
        raise ConnectionError("Couldn't reach 'x/y' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    with pytest.raises(MapeError, match="Cannot reach the Hugging Face Hub to load dataset 'x/y'"):
        load_hub_dataset("x/y")


# ---------------------------------------------------------------- subsampling


def test_subsample_train(bbc):
    assert subsample_train(bbc, None, 0) is bbc
    assert subsample_train(bbc, 10**6, 0) is bbc
    small = subsample_train(bbc, 100, 0)
    assert len(small.train) == 100 and small.test is bbc.test
    assert all(v >= 15 for v in small.class_counts(small.train.y).values())
    again = subsample_train(bbc, 100, 0)
    assert again.train.x == small.train.x
    assert subsample_train(bbc, 100, 1).train.x != small.train.x
    # the examples left out are kept as `unseen`: exactly the complement, in the original order
    assert bbc.unseen is None and len(small.unseen) == len(bbc.train) - 100
    # a partition of the training split (as multisets: BBC News holds some duplicate articles)
    assert sorted(small.train.x + small.unseen.x) == sorted(bbc.train.x)
    assert sorted(small.train.y.tolist() + small.unseen.y.tolist()) == sorted(bbc.train.y.tolist())
    with pytest.raises(MapeError, match="positive"):
        subsample_train(bbc, 0, 0)
