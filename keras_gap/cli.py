"""`keras-gap` command line: sparsity reports and strip-and-export.

Examples:
    keras-gap report model.keras            # per-weight sparsity of a Keras model
    keras-gap report model.tflite --json    # how a .tflite stores its weights
    keras-gap report --flops small.keras --reference dense.keras   # params and MACs
    keras-gap export model.keras --tflite out.tflite
    keras-gap export model.keras --tflite out_int8.tflite --quantize int8 \\
        --calibration calib.npy
    keras-gap export model.keras --saved-model out/saved_model --onnx out.onnx

User mistakes (missing file, not a Keras model, int8 without calibration
data, calibration samples whose shape does not fit the model, bad flags, ...)
print one line to stderr and exit with status 2. An unexpected failure prints
one line and exits with status 1; ``--debug`` shows its traceback instead.
TensorFlow's C++ logs, the TFLite converter's messages and other third-party
noise are hidden (`keras_gap.console.quiet_third_party`, from the start of the
``keras-gap`` command's process); ``--verbose`` shows them. Run as
``python -m keras_gap.cli``, TensorFlow's import-time lines are hidden only
with ``KERAS_GAP_QUIET=1`` in the environment.
"""

import argparse
import json
import os
import sys

_EPILOG = """\
TFLite speed-ups: only Dense layers (FULLY_CONNECTED) run sparse natively:
float32 with unstructured or (4,1) blocks, int8/dynamic with (16,1) blocks
(prune with block_size=keras_gap.export.tflite_block_size(quantize)).
Convolutions only get a smaller file on x86. See `keras-gap report out.tflite`.
"""


USER_ERROR = 2  # like argparse's usage errors
INTERNAL_ERROR = 1


class CLIError(Exception):
    """A user error reported as one line, exit status 2."""


def _quiet_third_party(verbose):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from keras_gap import console
    console.quiet_third_party(verbose=verbose)


def _common_flags():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help="show TensorFlow / TFLite / TFDS logs (hidden by default)")
    common.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of one line")
    return common


def _build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-gap",
        description="keras-gap: sparsity reports and sparse export of Keras models.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="{report,export}")
    sub.required = True

    rep = sub.add_parser(
        "report", parents=[_common_flags()], help="sparsity of a .keras model, or weight encoding of a .tflite",
        description="For a .keras model: per prunable weight, its parameters, "
        "non-zeros and sparsity (keras_gap.sparsity_report). For a .tflite file: "
        "per weight tensor, the consuming op, whether it is sparse-encoded, "
        "its block shape, stored values, DENSIFY ops, file and gzip size "
        "(keras_gap.export.inspect_tflite).")
    rep.add_argument("path", help="a .keras (or .h5) model or a .tflite file")
    rep.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rep.add_argument("--flops", action="store_true",
                     help="for a .keras model: parameters and MACs per layer, and the "
                     "MACs of its non-zero weights (keras_gap.flops_report)")
    rep.add_argument("--reference", metavar="REF.keras",
                     help="with --flops: a model to compare with (ratios of params and MACs)")

    exp = sub.add_parser(
        "export", parents=[_common_flags()], help="strip pruning wrappers and export (TFLite, SavedModel, ONNX)",
        description="Strips keras-gap pruning wrappers and writes the requested "
        "formats. TFLite files use the converter's sparse encoding and are "
        "verified against the Keras model (on the calibration data, or on random "
        "inputs when none is given) before being written.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    exp.add_argument("model", help="a .keras model (pruned or stripped)")
    exp.add_argument("--tflite", metavar="OUT.tflite", help="write a TFLite model")
    exp.add_argument("--quantize", choices=["dynamic", "float16", "int8"],
                     help="TFLite quantization (default: float32)")
    exp.add_argument("--calibration", metavar="FILE.npy",
                     help="samples [N, ...] for int8 calibration and verification "
                     "(.npy, or .npz with one array)")
    exp.add_argument("--no-sparse", action="store_true",
                     help="do not use the TFLite sparse encoding")
    exp.add_argument("--no-verify", action="store_true",
                     help="do not compare TFLite outputs with Keras")
    exp.add_argument("--optimize-for", choices=["size", "latency"], default="size",
                     help="size (default): the sparse encoding, with a note when it runs "
                     "slower than the dense one; latency: whichever encoding of the same "
                     "weights runs faster (both are timed; both times are printed)")
    exp.add_argument("--saved-model", metavar="DIR", help="write a SavedModel directory")
    exp.add_argument("--onnx", metavar="OUT.onnx",
                     help="write ONNX (needs tf2onnx and onnx on the TF backend)")
    return parser


def _require_file(path):
    if not os.path.exists(path):
        raise CLIError(f"no such file: {path}")
    if os.path.isdir(path):
        raise CLIError(f"{path} is a directory, expected a .keras or .tflite file")


def _load(path):
    from keras_gap.export import _common
    _require_file(path)
    try:
        return _common.load_keras_model(path)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None


def _flops(args):
    path = args.path
    if path.endswith(".tflite"):
        raise CLIError(f"--flops counts a Keras model; {path} is a .tflite file "
                       "(give the .keras model it was exported from)")
    model = _load(path)
    reference = _load(args.reference) if args.reference else None
    import keras_gap
    try:
        report = keras_gap.flops_report(model, reference=reference)
    except ValueError as e:
        raise CLIError(str(e).splitlines()[0]) from None
    print(json.dumps(report.to_dict(), indent=2) if args.json else report)
    return 0


def _report(args):
    path = args.path
    _require_file(path)
    if args.reference and not args.flops:
        raise CLIError("--reference applies to --flops only")
    if args.flops:
        return _flops(args)
    if path.endswith(".tflite"):
        from keras_gap.export import inspect_tflite
        try:
            info = inspect_tflite(path)
        except ValueError as e:
            raise CLIError(str(e)) from None
        print(json.dumps(info.to_dict(), indent=2) if args.json else info)
        return 0
    model = _load(path)
    import keras_gap
    report = keras_gap.sparsity_report(model)
    if not report.rows:
        raise CLIError(
            f"{path}: model {model.name!r} has no prunable weights (no Dense, Conv, "
            "Embedding, RNN or attention kernels): nothing to report")
    print(json.dumps(report.to_dict(), indent=2) if args.json else report)
    return 0


def _load_calibration(path):
    import numpy as np
    _require_file(path)
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:  # numpy raises ValueError / OSError / UnpicklingError
        raise CLIError(f"cannot read calibration data {path}: {e}") from None
    if hasattr(data, "files"):
        if len(data.files) != 1:
            raise CLIError(f"{path} holds {len(data.files)} arrays {data.files}; "
                           "expected exactly one (samples [N, ...])")
        data = data[data.files[0]]
    if data.ndim < 1 or data.shape[0] == 0:
        raise CLIError(f"calibration data {path} is empty; expected samples [N, ...]")
    return data.astype("float32") if data.dtype.kind in "fiu" else data


def _random_inputs(model, n=8):
    import numpy as np
    if len(model.inputs) != 1:
        return None
    shape = tuple(model.inputs[0].shape)
    if any(d is None for d in shape[1:]) or "float" not in str(model.inputs[0].dtype):
        return None
    return np.random.default_rng(0).normal(size=(n,) + shape[1:]).astype("float32")


def _export(args):
    if not (args.tflite or args.saved_model or args.onnx):
        raise CLIError("nothing to export: give --tflite, --saved-model and/or --onnx")
    if args.quantize and not args.tflite:
        raise CLIError("--quantize applies to --tflite only")
    if args.quantize == "int8" and not args.calibration:
        raise CLIError("--quantize int8 needs calibration data: --calibration "
                       "samples.npy (a few hundred training inputs, shape [N, ...])")
    model = _load(args.model)
    calibration = _load_calibration(args.calibration) if args.calibration else None
    import keras_gap
    from keras_gap import export
    from keras_gap.wrapper import collect_wrappers

    if not keras_gap.sparsity_report(model).rows:
        print(f"keras-gap: warning: {args.model} has no prunable weights; "
              "exporting it dense", file=sys.stderr)
    stripped = keras_gap.strip_pruning(model) if collect_wrappers(model) else model
    try:
        if args.saved_model:
            export.to_saved_model(stripped, args.saved_model)
            print(f"wrote SavedModel {args.saved_model}")
        if args.tflite:
            sample = None
            if calibration is None and not args.no_verify:
                sample = _random_inputs(stripped)
            import contextlib
            import io
            import warnings
            with warnings.catch_warnings(record=True) as caught, \
                    contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("always", export.SparseSlowerWarning)
                result = export.to_tflite(
                    stripped, args.tflite, sparse=not args.no_sparse,
                    quantize=args.quantize, representative_dataset=calibration,
                    sample_inputs=sample, verify=False if args.no_verify else None,
                    optimize_for=args.optimize_for)
            for w in caught:  # other warnings go on to stderr as usual
                if not issubclass(w.category, export.SparseSlowerWarning):
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)
            check = (f"verified (max abs diff {result.max_abs_diff:.3g}"
                     + (f", top-1 agreement {result.top1_agreement:.1%}"
                        if result.top1_agreement is not None else "") + ")"
                     if result.verified else "not verified")
            print(f"wrote {args.tflite} ({result.size:,} bytes, "
                  f"{args.quantize or 'float32'}, {result.encoding} encoding, {check})")
            if result.choice is not None:
                slower = any(issubclass(w.category, export.SparseSlowerWarning)
                             for w in caught)
                print(f"  {result.choice}"
                      + ("; note: the sparse file runs slower, --optimize-for latency "
                         "writes the faster one" if slower else ""))
        if args.onnx:
            export.to_onnx(stripped, args.onnx)
            print(f"wrote ONNX {args.onnx}")
    except (ValueError, ImportError, export.TFLiteVerificationError) as e:
        raise CLIError(str(e).splitlines()[0]) from None
    return 0


def main(argv=None):
    """Entry point of the ``keras-gap`` console script.

    Args:
        argv: argument list (default: ``sys.argv[1:]``).

    Returns:
        Exit status: 0 on success, 2 on a user mistake (bad flags, files or
        data: one line on stderr), 1 on an unexpected failure (one line;
        ``--debug`` raises it with its traceback).

    Example:
        >>> main(["report", "model.keras"])
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    _quiet_third_party(args.verbose)
    try:
        return _report(args) if args.command == "report" else _export(args)
    except CLIError as e:
        if args.debug:  # the original exception, with its traceback
            raise (e.__cause__ or e.__context__ or e) from None
        print(f"keras-gap: error: {e}", file=sys.stderr)
        return USER_ERROR
    except BrokenPipeError:  # e.g. `keras-gap report m.tflite | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # pylint: disable=broad-except
        if args.debug:
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        print(f"keras-gap: internal error: {type(e).__name__}: {first} "
              "(run again with --debug for the traceback)", file=sys.stderr)
        return INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
