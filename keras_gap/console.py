"""`quiet_third_party`: a readable console for keras-gap's scripts (examples, CLI).

TensorFlow's C++ start-up and converter logs, the TFLite runtime's "Created
TensorFlow Lite XNNPACK delegate" line, tensorflow-datasets' builder messages
and progress bars, and a few known third-party Python warnings drown a
script's own output. `quiet_third_party` hides them, for the whole process, in
processes that ask for it: keras-gap's examples and the ``keras-gap`` command
(each with a ``--verbose`` flag that shows them again). ``import keras_gap``
never calls it: a user's own process keeps every log unless it opts in.

Some of TensorFlow's lines are printed by C++ while ``tensorflow`` is being
imported (before any Python code of the script can run after the import). To
hide those too, opt in *before* the import, through the environment::

    KERAS_GAP_QUIET=1 python my_script.py     # or os.environ[...] before import

``import keras_gap`` reads ``KERAS_GAP_QUIET`` first, before it imports Keras
(and so TensorFlow), and calls `quiet_third_party` when it is "1" (or, without
the variable, in the ``keras-gap`` command's own process unless ``--verbose``).

How: native output (C++ ``absl``/TF logs written to file descriptor 2) goes
through a pipe; a thread forwards every line except the known noise patterns
(`NOISE_PATTERNS`) to the real stderr. Python tracebacks, warnings and
messages from keras-gap or Keras themselves pass through unchanged.
"""

import atexit
import logging
import os
import re
import sys
import threading
import warnings

__all__ = ["LogFraction", "LogInt", "NOISE_PATTERNS", "QUIET_ENV", "is_quiet", "quiet_third_party"]

QUIET_ENV = "KERAS_GAP_QUIET"

# Lines hidden from stderr (regular expressions matched at the start of a line).
NOISE_PATTERNS = (
    # absl / TensorFlow C++ logs: "I0000 00:00:1795286067.553355    6754 port.cc:153] ..."
    # (info, warning and error; fatal "F" lines are kept).
    r"[IWE]\d{4} [\d:.]+\s+\d+ \S+:\d+\] ",
    r"WARNING: All log messages before absl::InitializeLog\(\) is called",
    # The continuation line of cpu_feature_guard's message.
    r"To enable the following instructions: .* rebuild TensorFlow",
    # TFLite runtime and converter.
    r"INFO: Created TensorFlow Lite .*delegate",
    r"INFO: Initialized TensorFlow Lite runtime",
    r"fully_quantize: \d+, inference_type: ",
)

# Known third-party Python warnings (message regex, category) that say nothing
# actionable to a keras-gap user.
_WARNINGS = (
    (r"Statistics for quantized inputs were expected", UserWarning),  # TFLite int8 converter
    (r".*tf\.lite\.Interpreter is deprecated", UserWarning),
    (r"Your `PyDataset` class should call", UserWarning),
    # Keras' fit(tf.data.Dataset) with the default shuffle=True.
    (r"`shuffle=True` was passed, but will be ignored", UserWarning),
)

# Python loggers of third-party libraries lowered to ERROR.
_LOGGERS = ("absl", "tensorflow", "tensorflow_datasets", "jax._src.xla_bridge",
            "h5py", "PIL")

_state = {"quiet": False, "filter": None}


def is_quiet():
    """Whether `quiet_third_party` is active in this process.

    Returns:
        True after `quiet_third_party()` ran (and was not undone).

    Example:
        >>> from keras_gap import console
        >>> console.is_quiet()
        False
    """
    return _state["quiet"]


class _StderrFilter:
    """File descriptor 2 -> pipe -> thread that drops noise lines -> real stderr."""

    def __init__(self, patterns):
        self._noise = re.compile("|".join(f"(?:{p})" for p in patterns))
        for stream in (sys.stdout, sys.stderr):
            _flush(stream)
        self._real = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self._read_end = read_end
        self._thread = threading.Thread(target=self._pump, name="keras_gap_stderr_filter",
                                        daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def _forward(self, line):
        if not self._noise.match(line.decode("utf-8", "replace")):
            os.write(self._real, line)

    def _pump(self):
        pending = b""
        while True:
            try:
                chunk = os.read(self._read_end, 65536)
            except OSError:
                break
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self._forward(line + b"\n")
            # A partial line that cannot be noise (progress bars with "\r",
            # prompts) is shown now rather than at the next newline.
            if pending and not self._could_be_noise(pending):
                os.write(self._real, pending)
                pending = b""
        if pending:
            self._forward(pending)

    def _could_be_noise(self, partial):
        text = partial.decode("utf-8", "replace")
        return bool(re.match(r"[IWEf]|INFO|WARNING|To enable", text)) and "\r" not in text

    def close(self):
        """Restores the real stderr and forwards what is still in the pipe."""
        if self._real is None:
            return
        _flush(sys.stderr)
        os.dup2(self._real, 2)  # closes the pipe's last write end: the thread sees EOF
        self._thread.join(timeout=5)
        os.close(self._real)
        self._real = None
        try:
            os.close(self._read_end)
        except OSError:
            pass


def _flush(stream):
    try:
        stream.flush()
    except (AttributeError, ValueError, OSError):
        pass


def quiet_third_party(verbose=False):
    """Hides TensorFlow/TFLite/TFDS logs and known third-party warnings in this process.

    For scripts and command-line tools (keras-gap's examples and the
    ``keras-gap`` command call it unless ``--verbose`` is given). ``import
    keras_gap`` calls it only when asked to (``KERAS_GAP_QUIET=1``, or in the
    ``keras-gap`` command's own process); a library user's process keeps
    every log. It sets ``TF_CPP_MIN_LOG_LEVEL=3`` (if unset),
    filters native stderr lines matching `NOISE_PATTERNS`, lowers the
    ``absl``, ``tensorflow`` and ``tensorflow_datasets`` Python loggers to
    ERROR, turns off tensorflow-datasets' progress bars and ignores a few
    known third-party warnings. Lines printed before the call (TensorFlow's
    import-time logs) cannot be taken back: call it before importing
    TensorFlow, or set ``KERAS_GAP_QUIET=1`` before ``import keras_gap``.
    Calling it twice is harmless.

    Args:
        verbose: True does nothing (the ``--verbose`` flag of a script), so a
            script can always call ``quiet_third_party(FLAGS.verbose)``.

    Returns:
        True when the console is now quiet, False when ``verbose`` was True.

    Example:
        >>> from keras_gap import console
        >>> console.quiet_third_party(verbose="--verbose" in sys.argv)
    """
    if verbose:
        return False
    if _state["quiet"]:
        return True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if _state["filter"] is None:
        try:
            _state["filter"] = _StderrFilter(NOISE_PATTERNS)
        except OSError:  # no usable file descriptor 2 (embedded interpreters)
            _state["filter"] = False
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for message, category in _WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    _state["quiet"] = True
    if "tensorflow_datasets" in sys.modules:
        _quiet_tfds(sys.modules["tensorflow_datasets"])
    return True


def _quiet_tfds(tfds):
    """Turns off TFDS progress bars (called when quiet and TFDS is imported)."""
    try:
        tfds.disable_progress_bar()
    except AttributeError:
        pass


def quiet_tfds_if_requested(tfds):
    """Used by `keras_gap.datasets` right after it imports tensorflow-datasets."""
    if _state["quiet"]:
        _quiet_tfds(tfds)


def _from_environment():
    """Called first by ``import keras_gap``, before Keras and TensorFlow load.

    Quiet only in processes that asked for it: ``KERAS_GAP_QUIET=1``, or the
    ``keras-gap`` command itself (whose import of keras_gap precedes its own
    code) unless it was given ``--verbose`` or ``KERAS_GAP_QUIET=0``.
    """
    setting = os.environ.get(QUIET_ENV)
    argv = getattr(sys, "argv", None) or [""]
    command = os.path.basename(str(argv[0])) in ("keras-gap", "keras-gap.exe")
    if setting == "1" or (command and setting != "0" and "--verbose" not in argv[1:]):
        quiet_third_party()


class LogInt(int):
    """An int log value that Keras' progress bar prints as an integer.

    Keras' ``Progbar`` averages every value it shows (``np.mean``, then a
    division by the count) and formats the result with ``.4f`` / ``.4e``, so
    a partition index 0 reads ``0.0000e+00``. This int survives both steps
    unchanged and formats without decimals; History, CSV and TensorBoard
    loggers see a plain int.

    Example:
        >>> f"{LogInt(2):.4f}", f"{LogInt(0):.4e}", LogInt(3) / 1
        ('2', '0', 3)
    """

    def mean(self, *args, **kwargs):  # np.mean(x) calls x.mean() for non-arrays
        del args, kwargs
        return self

    def __truediv__(self, other):
        return self if other == 1 else int(self) / other

    def __format__(self, spec):
        if spec and spec[-1] in "eEfFgG%":
            return str(int(self))
        return int.__format__(int(self), spec)


class LogFraction(float):
    """A fraction log value (sparsity) that the progress bar prints as 0.9000, never 0.0000e+00.

    Keras' ``Progbar`` switches to ``.4e`` below 1e-3, so a dense model's
    sparsity reads ``0.0000e+00``. This float keeps four decimals; other
    loggers see a plain float.

    Example:
        >>> f"{LogFraction(0.0):.4e}", f"{LogFraction(0.9):.4f}"
        ('0.0000', '0.9000')
    """

    def __truediv__(self, other):
        return self if other == 1 else float(self) / other

    def __format__(self, spec):
        if spec and spec[-1] in "eEgG":
            return float.__format__(float(self), ".4f")
        return float.__format__(float(self), spec)
