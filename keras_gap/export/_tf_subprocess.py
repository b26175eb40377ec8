"""One export path for every backend: convert in a TensorFlow-backend subprocess.

The TFLite converter and ``tf.saved_model`` trace TensorFlow graphs. Under the
JAX or PyTorch backend, Keras' own exporters either fail (PyTorch: a
``torch._dynamo`` UserError inside ``model.export``) or trace a different graph
(JAX: jax2tf adds BROADCAST_TO, CAST, GATHER, ... ops; measured 5-17x slower
TFLite files). Weights and configs are backend-independent, so when the active
backend is not TensorFlow the exporters in this package:

1. strip the model in this process (exactly as on TensorFlow),
2. save it to a temporary ``.keras`` file (written, then renamed into place),
   with the sample / calibration arrays as ``.npy`` files and a ``job.json``,
3. run ``KERAS_BACKEND=tensorflow python -m keras_gap.export._tf_subprocess
   JOB_DIR``: the child loads the ``.keras`` with keras-gap's layers registered
   (and imports the modules the model's own layer classes come from), and runs
   the same in-process TensorFlow code as a TensorFlow-backend session,
4. verify the result here, against the original backend's Keras outputs.

A child failure becomes one `ExportSubprocessError` naming the child's last
error line, the layer that failed to trace when one can be found, and what to
do; the child's full traceback is kept in ``.child_traceback``.
"""

import json
import os
import sys
import tempfile
import time
import traceback

import numpy as np

CHILD_MODULE = "keras_gap.export._tf_subprocess"
TIMEOUT_S = 1800


class ExportSubprocessError(RuntimeError):
    """The TensorFlow-backend export subprocess failed.

    Attributes:
        child_type: the exception type raised in the child ("ValueError", ...).
        child_message: its last error line.
        layer: "name (Class)" of the layer that failed, when one was found.
        child_traceback: the child's full traceback (or stderr tail).
    """

    def __init__(self, message, child_type=None, child_message=None, layer=None,
                 child_traceback=None):
        super().__init__(message)
        self.child_type = child_type
        self.child_message = child_message
        self.layer = layer
        self.child_traceback = child_traceback


def needed():
    """True when the active Keras backend is not TensorFlow (export goes through the child)."""
    import keras
    return keras.backend.backend() != "tensorflow"


def _layer_modules(model):
    """Modules the child must import so the model's layer classes deserialize."""
    mods = set()
    for layer in model._flatten_layers(include_self=True, recursive=True):
        mod = type(layer).__module__
        if mod.split(".")[0] in ("keras", "keras_gap", "builtins"):
            continue
        if mod == "__main__":
            raise ValueError(
                f"Layer {layer.name!r} ({type(layer).__name__}) is defined in __main__; "
                f"exporting on the {_backend()!r} backend converts in a TensorFlow "
                "subprocess, which cannot import classes of your script. Move the class "
                "to an importable module and decorate it with "
                "@keras.saving.register_keras_serializable().")
        mods.add(mod)
    return sorted(mods)


def _backend():
    import keras
    return keras.backend.backend()


def _save_npy(job_dir, name, arrays):
    if arrays is None:
        return None
    files = []
    for i, a in enumerate(arrays):
        f = f"{name}_{i}.npy"
        np.save(os.path.join(job_dir, f), np.asarray(a), allow_pickle=False)
        files.append(f)
    return files


def _child_env():
    env = dict(os.environ)
    env["KERAS_BACKEND"] = "tensorflow"
    env.setdefault("KERAS_GAP_QUIET", "1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["CUDA_VISIBLE_DEVICES"] = "-1"  # conversion runs on the CPU; leave GPUs to the parent
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


class _Finished:
    """What the parent knows about a child run that wrote no result."""

    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


class _Worker:
    """One long-lived TensorFlow-backend child that runs export jobs one by one.

    The child pays TensorFlow's import (about 6 s on 2 cores) once per parent
    process instead of once per export. Jobs are sent as job-directory lines
    on its stdin; it answers ``KERAS_GAP_DONE`` on stdout once the job's
    ``result.json`` is written. A child that died is restarted for the next job.
    ``KERAS_GAP_EXPORT_WORKER=0`` runs a fresh child per job instead.
    """

    MARK = "KERAS_GAP_DONE"

    def __init__(self):
        import threading
        self._proc = None
        self._log = None
        self._lock = threading.Lock()
        self.starts = 0

    def _start(self):
        import atexit
        import subprocess
        log_dir = tempfile.mkdtemp(prefix="keras_gap_export_worker_")
        self._log = os.path.join(log_dir, "stderr.log")
        # Binary and unbuffered: the parent waits on the pipe's file descriptor
        # (select + os.read), so no line may sit unseen in a Python-level buffer.
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-u", "-c", _CHILD_SERVE], env=_child_env(),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, bufsize=0)
        self.starts += 1
        if self.starts == 1:
            atexit.register(self.close)

    def close(self):
        """Stops the child (its stdin closes; it exits)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
            proc.wait(timeout=10)
            proc.stdout.close()
        except Exception:  # pylint: disable=broad-except
            proc.kill()

    def _stderr_tail(self):
        try:
            with open(self._log) as f:
                return f.read()[-8000:]
        except (OSError, TypeError):
            return ""

    def run(self, job_dir, what, backend):
        if os.environ.get("KERAS_GAP_EXPORT_WORKER", "1") == "0":
            return self._run_once(job_dir, what, backend)
        import selectors
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            proc = self._proc
            try:
                proc.stdin.write(f"{job_dir}\n".encode())
                proc.stdin.flush()
            except OSError:  # died between the poll and the write
                self._start()
                proc = self._proc
                proc.stdin.write(f"{job_dir}\n".encode())
                proc.stdin.flush()
            mark = f"{self.MARK} {job_dir}".encode()
            out, deadline = b"", time.monotonic() + TIMEOUT_S
            fd = proc.stdout.fileno()
            sel = selectors.DefaultSelector()
            sel.register(fd, selectors.EVENT_READ)
            try:
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        proc.kill()
                        self._proc = None
                        raise ExportSubprocessError(
                            f"{what} on the {backend!r} backend: the TensorFlow export "
                            f"subprocess ran longer than {TIMEOUT_S} s and was stopped.")
                    if not sel.select(timeout=min(left, 5.0)):
                        continue
                    chunk = os.read(fd, 65536)
                    if not chunk:  # EOF: the child died
                        proc.wait()
                        self._proc = None
                        return _Finished(proc.returncode, out.decode(errors="replace"),
                                         self._stderr_tail())
                    out += chunk
                    if mark in out:
                        return _Finished(0, out.decode(errors="replace"), "")
            finally:
                sel.close()

    def _run_once(self, job_dir, what, backend):
        import subprocess
        try:
            proc = subprocess.run([sys.executable, "-c", _CHILD_SERVE.replace(
                "['--serve']", repr([job_dir]))],
                                  env=_child_env(), capture_output=True, text=True,
                                  timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            raise ExportSubprocessError(
                f"{what} on the {backend!r} backend: the TensorFlow export subprocess ran "
                f"longer than {TIMEOUT_S} s and was stopped.") from e
        return _Finished(proc.returncode, proc.stdout, proc.stderr)


_WORKER = _Worker()
# The child's entry (not ``-m``: the package imports this module first).
_CHILD_SERVE = f"import sys; from {CHILD_MODULE} import main; sys.exit(main(['--serve']))"


def run(kind, model, options, arrays=None, what="export"):
    """Runs one export job in a TensorFlow-backend subprocess.

    Args:
        kind: "tflite", "saved_model" or "onnx".
        model: the stripped `keras.Model` (active, non-TensorFlow backend).
        options: JSON-serializable options of the in-process exporter; an
            ``"out"`` entry (absolute path) names where the child writes.
        arrays: optional {name: [arrays]} passed as ``.npy`` files.
        what: the public function's name, for messages ("to_tflite").

    Returns:
        (result dict written by the child, timing dict with ``save_s``,
        ``child_s``, ``work_s`` and ``overhead_s``).

    Raises:
        ExportSubprocessError: the child failed (one clear message).
    """
    backend = _backend()
    modules = _layer_modules(model)
    with tempfile.TemporaryDirectory(prefix="keras_gap_export_") as job_dir:
        t0 = time.perf_counter()
        partial = os.path.join(job_dir, "partial.keras")
        try:
            model.save(partial)
        except Exception as e:  # keras raises many types for unserializable objects
            raise ExportSubprocessError(
                f"{what} on the {backend!r} backend saves the model to a .keras file for "
                f"the TensorFlow export subprocess, and saving failed: {type(e).__name__}: "
                f"{_first_line(e)}. Every layer must be serializable (get_config, "
                "@keras.saving.register_keras_serializable()).") from e
        os.replace(partial, os.path.join(job_dir, "model.keras"))
        job = {"kind": kind, "model": "model.keras", "modules": modules,
               "options": options, "backend": backend,
               "arrays": {k: _save_npy(job_dir, k, v) for k, v in (arrays or {}).items()}}
        with open(os.path.join(job_dir, "job.json"), "w") as f:
            json.dump(job, f)
        save_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        proc = _WORKER.run(job_dir, what, backend)
        child_s = time.perf_counter() - t1
        result_path = os.path.join(job_dir, "result.json")
        result = None
        if os.path.exists(result_path):
            with open(result_path) as f:
                result = json.load(f)
        if result is None or not result.get("ok"):
            raise _child_error(what, backend, result, proc)
        work_s = float(result.get("work_s", 0.0))
        timing = {"backend": backend, "save_s": save_s, "child_s": child_s,
                  "work_s": work_s, "overhead_s": save_s + child_s - work_s}
        files = {}
        for key, name in result.get("files", {}).items():
            with open(os.path.join(job_dir, name), "rb") as f:
                files[key] = f.read()
        result["files"] = files
        return result, timing


def _first_line(e):
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def _last_line(text):
    lines = [l.strip() for l in (text or "").splitlines() if l.strip()]
    return lines[-1] if lines else ""


def _child_error(what, backend, result, proc):
    if result is None:
        last = _last_line(proc.stderr) or _last_line(proc.stdout) or \
            f"exit status {proc.returncode}, no output"
        return ExportSubprocessError(
            f"{what} on the {backend!r} backend converts in a TensorFlow subprocess, which "
            f"stopped without a result (exit status {proc.returncode}): {last}. Check that "
            "TensorFlow imports in this environment (python -c 'import tensorflow'), or "
            "save the model (model.save('m.keras')) and run KERAS_BACKEND=tensorflow "
            "keras-gap export m.keras ... --debug to see the whole error.",
            child_message=last, child_traceback=(proc.stderr or "")[-8000:])
    ctype, message, layer = result.get("type"), result.get("message", ""), result.get("layer")
    if layer:
        return ExportSubprocessError(
            f"{what} on the {backend!r} backend: layer {layer} cannot be traced by the "
            f"TensorFlow backend, which every export goes through (the {backend!r} model is "
            "converted in a TensorFlow subprocess). Its call() must use keras.ops only, no "
            f"{backend}-specific calls. TensorFlow said: "
            f"{result.get('layer_error') or f'{ctype}: {message}'}",
            child_type=ctype, child_message=message, layer=layer,
            child_traceback=result.get("traceback"))
    if ctype in ("TypeError", "ValueError") and ("Unknown layer" in message
                                                   or "Could not locate" in message
                                                   or "Could not deserialize" in message):
        hint = ("The TensorFlow subprocess could not rebuild a layer from the .keras file: "
                "register its class with @keras.saving.register_keras_serializable() in an "
                "importable module.")
    else:
        hint = ("The same error happens on KERAS_BACKEND=tensorflow: save the model "
                "(model.save('m.keras')) and run KERAS_BACKEND=tensorflow keras-gap export "
                "m.keras ... --debug for the whole traceback (also in this exception's "
                ".child_traceback).")
    return ExportSubprocessError(
        f"{what} on the {backend!r} backend failed in its TensorFlow export subprocess: "
        f"{ctype}: {message}. {hint}", child_type=ctype, child_message=message,
        layer=layer, child_traceback=result.get("traceback"))


def _failing_layer_in_chain(exc):
    """`_failing_layer` of ``exc`` or of the exceptions it was raised from (loading
    wraps a layer's failure in "Could not load ...")."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        layer = _failing_layer(exc.__traceback__)
        if layer:
            return layer, f"{type(exc).__name__}: {_first_line(exc)}"
        exc = exc.__cause__ or exc.__context__
    return None, None


def _failing_layer(tb):
    """'name (Class)' of the innermost non-Model Keras layer on the traceback."""
    try:
        import keras
    except ImportError:  # pragma: no cover
        return None
    found = None
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if isinstance(obj, keras.layers.Layer) and not isinstance(obj, keras.Model) \
                and not type(obj).__name__ == "InputLayer":
            found = f"{obj.name!r} ({type(obj).__name__})"
        tb = tb.tb_next
    return found


# --- child side ------------------------------------------------------------------------

def _load_arrays(job_dir, files):
    if files is None:
        return None
    return [np.load(os.path.join(job_dir, f), allow_pickle=False) for f in files]


def _child_work(job_dir, job):
    import importlib

    from keras_gap.export import _common

    for mod in job.get("modules", []):
        importlib.import_module(mod)
    model = _common.prepare_model(_common.load_keras_model(
        os.path.join(job_dir, job["model"])))
    opts = job["options"]
    arrays = {k: _load_arrays(job_dir, v) for k, v in job.get("arrays", {}).items()}
    kind = job["kind"]
    start = time.perf_counter()
    out = _child_convert(kind, model, opts, arrays, job_dir)
    out["work_s"] = time.perf_counter() - start  # the part an in-process export also pays
    return out


def _child_convert(kind, model, opts, arrays, job_dir):
    if kind == "tflite":
        from keras_gap.export import tflite
        rep = arrays.get("representative")
        datas = tflite._convert_encodings(
            model, opts["sparse"], opts["quantize"], rep, opts["max_calibration_samples"],
            opts["want_dense"])
        files = {}
        for key, data in datas.items():
            if data is not None:
                with open(os.path.join(job_dir, f"{key}.tflite"), "wb") as f:
                    f.write(data)
                files[key] = f"{key}.tflite"
        return {"files": files}
    if kind == "saved_model":
        from keras_gap.export import saved_model
        saved_model._export_in_process(model, opts["out"])
        return {}
    if kind == "onnx":
        from keras_gap.export import onnx
        signature = opts.get("input_signature")
        if signature is not None:
            import tensorflow as tf
            signature = [tf.TensorSpec(s["shape"], s["dtype"]) for s in signature]
        onnx._export_in_process(model, opts["out"], opts.get("opset_version"), signature)
        return {}
    raise ValueError(f"unknown export job kind {kind!r}")


def main(argv=None):
    """Child entry point: ``python -m keras_gap.export._tf_subprocess JOB_DIR``
    (one job) or ``... --serve`` (job directories, one per stdin line)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--serve":
        for line in sys.stdin:
            job_dir = line.strip()
            if job_dir:
                _run_job(job_dir)
                sys.stdout.write(f"\n{_Worker.MARK} {job_dir}\n")
                sys.stdout.flush()
        return 0
    return _run_job(argv[0])


def _run_job(job_dir):
    with open(os.path.join(job_dir, "job.json")) as f:
        job = json.load(f)
    try:
        import keras
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError("the export subprocess needs KERAS_BACKEND=tensorflow; got "
                               f"{keras.backend.backend()!r}")
        keras.backend.clear_session()
        result = dict(_child_work(job_dir, job), ok=True)
    except BaseException as e:  # everything goes back to the parent as one record
        layer, layer_error = _failing_layer_in_chain(e)
        result = {"ok": False, "type": type(e).__name__, "message": _first_line(e),
                  "layer": layer, "layer_error": layer_error,
                  "traceback": "".join(traceback.format_exception(e))[-8000:]}
    tmp = os.path.join(job_dir, "result.json.tmp")
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, os.path.join(job_dir, "result.json"))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
