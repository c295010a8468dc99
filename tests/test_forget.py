"""Tests for mape.data.forget: every selector, seeding, errors, and a property test."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mape.base.errors import MapeError
from mape.data.datasets import Dataset, Split
from mape.data.forget import MAX_FORGET_FRACTION, ForgetSet, retain_indices, select_forget

TEXTS = ["apple pie", "banana split", "Apple juice", "cherry tart", "banana bread",
         "date loaf", "apple crumble", "fig roll", "grape jam", "kiwi (green)"]
LABELS = [0, 1, 0, 2, 1, 2, 0, 1, 2, 0]


def make_ds() -> Dataset:
    y = np.array(LABELS, dtype=np.int64)
    return Dataset("fruit", "text", ["a", "b", "c"], Split(list(TEXTS), y), Split(["x"], np.array([0])))


def image_ds() -> Dataset:
    x = np.zeros((10, 2, 2), dtype=np.uint8)
    return Dataset("img", "image", ["0", "1"], Split(x, np.array([0, 1] * 5)), Split(x[:1], np.array([0])))


DS = make_ds()


def idx(spec, ds=DS, **kw):
    return select_forget(spec, ds, **kw).indices.tolist()


# ---------------------------------------------------------------- selectors


def test_random_count_and_percent():
    f = select_forget("random:3", DS, seed=0)
    expected = np.sort(np.random.default_rng(0).choice(10, size=3, replace=False)).tolist()
    assert f.indices.tolist() == expected and f.size == 3 and f.forget_class is None
    assert f.indices.dtype == np.int64
    assert len(idx("random:30%")) == 3
    assert len(idx("random:0.5%")) == 1  # at least one example
    assert len(idx("random:55%")) == 6  # rounds 5.5 to the nearest even count


def test_seeding():
    assert idx("random:4", seed=7) == idx("random:4", seed=7)
    assert len({tuple(idx("random:4", seed=s)) for s in range(10)}) > 1
    assert idx("class:b:2", seed=3) == idx("class:b:2", seed=3)


def test_class_whole():
    f = select_forget("class:a", DS)
    assert f.indices.tolist() == [0, 2, 6, 9] and f.forget_class == 0
    assert f.to_json() == {"spec": "class:a", "size": 4, "indices": [0, 2, 6, 9], "forget_class": "a"}
    assert idx("class:0") == idx("class:A") == idx("  CLASS:a  ") == [0, 2, 6, 9]
    assert select_forget("  CLASS:a  ", DS).spec == "CLASS:a"
    assert idx("class:c") == [3, 5, 8]


def test_class_sample():
    f = select_forget("class:b:2", DS, seed=0)
    assert f.forget_class is None and f.size == 2 and set(f.indices) <= {1, 4, 7}
    assert f.to_json()["forget_class"] is None
    assert idx("class:1:3") == [1, 4, 7]


def test_class_name_with_colon():
    ds = make_ds()
    ds.classes = ["a:1", "b", "c"]
    assert idx("class:a:1", ds) == [0, 2, 6, 9]
    assert len(idx("class:b:1", ds)) == 1


def test_match():
    assert idx("match:apple") == [0, 2, 6]
    assert idx("match:^b") == [1, 4]
    assert idx(r"match:\(green\)") == [9]
    assert idx("MATCH:an+a") == [1, 4]


def test_indices_and_ranges():
    f = select_forget("indices:7,0, 3 5-6 3,0", DS)
    assert f.indices.tolist() == [0, 3, 5, 6, 7] and f.forget_class is None
    assert idx("indices:9") == [9]
    assert idx("indices:2-2") == [2]


def test_indices_file(tmp_path):
    p = tmp_path / "forget.txt"
    p.write_text("# ids to forget\n1, 2\n8   # trailing comment\n\n2\n")
    assert idx(f"indices-file:{p}") == [1, 2, 8]
    assert idx(f"Indices-File: {p} ") == [1, 2, 8]


def test_retain_and_json():
    f = select_forget("indices:1,4,5", DS)
    r = retain_indices(f, 10)
    assert r.tolist() == [0, 2, 3, 6, 7, 8, 9] and r.dtype == np.int64
    assert np.intersect1d(r, f.indices).size == 0
    assert f.to_json() == {"spec": "indices:1,4,5", "size": 3, "indices": [1, 4, 5], "forget_class": None}
    with pytest.raises(MapeError, match="does not fit"):
        retain_indices(f, 3)


def test_max_fraction():
    assert MAX_FORGET_FRACTION == 0.6
    assert len(idx("random:6")) == 6
    with pytest.raises(MapeError, match=r"is 7 of 10 training examples \(70.0%\); the limit is 60%"):
        select_forget("random:7", DS)
    with pytest.raises(MapeError, match="the limit is 20%"):
        select_forget("class:a", DS, max_fraction=0.2)
    with pytest.raises(MapeError, match="whole training set"):
        select_forget("indices:0-9", DS, max_fraction=1.0)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("spec, message", [
    ("", "empty; valid kinds are random:N"),
    ("   ", "empty"),
    ("forget:3", "Unknown forget selector 'forget'; valid kinds are random:N"),
    ("3", "Unknown forget selector"),
    ("random", "needs a value after 'random:'"),
    ("random:", "needs a value"),
    ("random:abc", "'abc' in forget spec 'random:abc' must be a whole number"),
    ("random:2.5", "must be a whole number"),
    ("random:-1", "must be a whole number"),
    ("random:0", "must be positive, not 0"),
    ("random:11", "asks for 11 examples but only 10 are available"),
    ("random:99999999999999999999999999", "only 10 are available"),
    ("random:0%", "must be a number in (0, 100]"),
    ("random:150%", "must be a number in"),
    ("random:x%", "must be a number in"),
    ("random:nan%", "must be a number in"),
    ("random:100%", "whole training set"),
    ("random:10", "whole training set (10 examples)"),
    ("class:zzz", "Unknown class 'zzz' for dataset 'fruit'; valid classes are a, b, c"),
    ("class:3", "valid classes are a, b, c"),
    ("class:a:9", "asks for 9 examples but only 4 are available"),
    ("class:a:x", "'x' in forget spec 'class:a:x' must be a whole number"),
    ("class:a:0", "must be positive"),
    ("class:", "needs a value"),
    ("match:", "needs a regular expression"),
    ("match:(", "Invalid regular expression '(' in forget spec: missing )"),
    ("match:zzz", "'zzz' matches no training text"),
    ("indices:1,x", "'x' in forget spec 'indices:1,x' is not an index or a range"),
    ("indices:-3", "is not an index or a range"),
    ("indices:1.5", "is not an index or a range"),
    ("indices:10", "Index 10 in forget spec 'indices:10' is out of range; valid indices are 0..9"),
    ("indices:2-99999999999999999999999", "out of range; valid indices are 0..9"),
    ("indices:5-3", "runs backwards"),
    ("indices:,,", "lists no indices"),
    ("indices-file:/no/such/file.txt", "Cannot read index file '/no/such/file.txt'"),
    ("indices-file:/dev/null", "not a regular file"),
])
def test_errors(spec, message):
    with pytest.raises(MapeError) as err:
        select_forget(spec, DS)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_error_not_a_string():
    with pytest.raises(MapeError, match="empty"):
        select_forget(None, DS)  # type: ignore[arg-type]


def test_match_on_images():
    with pytest.raises(MapeError, match="match: selects texts, but dataset 'img' holds images"):
        select_forget("match:x", image_ds())
    assert idx("class:1", image_ds()) == [1, 3, 5, 7, 9]


def test_index_file_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n")
    with pytest.raises(MapeError, match="lists no indices"):
        select_forget(f"indices-file:{empty}", DS)
    bad = tmp_path / "bad.txt"
    bad.write_text("1, 2, three\n")
    with pytest.raises(MapeError, match="'three' .* is not an index"):
        select_forget(f"indices-file:{bad}", DS)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(MapeError, match="Cannot read index file"):
        select_forget(f"indices-file:{binary}", DS)
    with pytest.raises(MapeError, match="Cannot read index file"):
        select_forget(f"indices-file:{tmp_path}", DS)


def test_empty_class():
    ds = make_ds()
    ds.classes = ["a", "b", "c", "d"]
    with pytest.raises(MapeError, match="Class 'd' has no training examples"):
        select_forget("class:d", ds)


# ---------------------------------------------------------------- property


KINDS = ["random", "class", "match", "indices", "RANDOM", "Class", "bogus", ""]
specs = st.one_of(
    st.text(max_size=30),
    st.builds(lambda k, a: f"{k}:{a}", st.sampled_from(KINDS), st.text(max_size=20)),
    st.builds(lambda k, a: f"{k}:{a}", st.sampled_from(KINDS),
              st.text(alphabet="0123456789-,:% .abc", max_size=12)),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs, seed=st.integers(0, 2**32 - 1))
def test_property_valid_or_mape_error(spec, seed):
    try:
        f = select_forget(spec, DS, seed=seed)
    except MapeError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert isinstance(f, ForgetSet)
    ids = f.indices
    assert ids.dtype == np.int64 and ids.size > 0
    assert np.all(np.diff(ids) > 0)
    assert ids.min() >= 0 and ids.max() < len(DS.train)
    assert ids.size <= MAX_FORGET_FRACTION * len(DS.train) and ids.size < len(DS.train)
    assert f.forget_class is None or set(DS.train.y[ids]) == {f.forget_class}
