"""`inspect_tflite`: what the TFLite converter did with each weight tensor.

Reads the ``.tflite`` flatbuffer directly (TensorFlow's generated schema), so
nothing is allocated or run. For every constant weight tensor it reports the
op that consumes it, its shape and type, whether it carries sparsity
parameters (the TACO encoding of ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY``),
the block shape, and how many values are stored. A sparse tensor consumed by
a DENSIFY op is expanded to a dense tensor at load time: it makes the file
smaller but the op computes densely. Only FULLY_CONNECTED reads sparse weights
natively (see `keras_gap.export.tflite_block_size`).
"""

import dataclasses
import gzip
import os

import numpy as np

# Ops whose constant inputs are "weights" worth reporting.
_PASS_OPS = ("DENSIFY", "DEQUANTIZE")

_NUMPY_TYPES = {
    "FLOAT32": np.float32, "FLOAT16": np.float16, "FLOAT64": np.float64,
    "INT8": np.int8, "UINT8": np.uint8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "BOOL": np.bool_,
}


def _schema():
    from tensorflow.lite.python import schema_py_generated as schema
    return schema


def _enum_names(enum_cls):
    return {v: k for k, v in vars(enum_cls).items()
            if not k.startswith("_") and isinstance(v, int)}


@dataclasses.dataclass(frozen=True)
class TFLiteTensorInfo:
    """One constant weight tensor of a ``.tflite`` model.

    Attributes:
        name: tensor name given by the converter.
        op: the op that computes with it (e.g. "FULLY_CONNECTED"); when the
            tensor goes through DENSIFY / DEQUANTIZE first, the chain is shown,
            e.g. "DENSIFY -> CONV_2D".
        shape: the dense shape (TFLite layout: FC weights are [out, in], conv
            weights [out, kh, kw, in]).
        dtype: TFLite type name ("FLOAT32", "INT8", "FLOAT16", ...).
        sparse: whether the tensor carries sparsity parameters.
        block: block shape in the tensor's own dims, e.g. (1, 4) for a
            FULLY_CONNECTED weight with TFLite's 1x4 blocks (a (4, 1) block on
            the Keras [in, out] kernel); None for unstructured or dense.
        densified: consumed by a DENSIFY op (expanded to dense at load time).
        num_elements: elements of the dense shape.
        stored_values: values stored in the buffer (for block-sparse tensors
            this includes the zeros inside kept blocks).
        nonzeros: non-zero values in the buffer.
    """

    name: str
    op: str
    shape: tuple
    dtype: str
    sparse: bool
    block: tuple
    densified: bool
    num_elements: int
    stored_values: int
    nonzeros: int

    @property
    def sparsity(self):
        """Fraction of zeros of the dense tensor."""
        return 1.0 - self.nonzeros / self.num_elements if self.num_elements else 0.0

    @property
    def native_sparse(self):
        """Sparse-encoded and read directly by a FULLY_CONNECTED kernel."""
        return self.sparse and self.op == "FULLY_CONNECTED"


@dataclasses.dataclass(frozen=True)
class TFLiteInspection:
    """Result of `inspect_tflite`; ``print()`` it or use ``to_dict()``.

    Attributes:
        path: the inspected file.
        file_size: bytes on disk.
        gzip_size: bytes after ``gzip -9`` (what a download would cost).
        tensors: tuple of `TFLiteTensorInfo`, one per constant weight tensor.
        ops: dict op name -> count.
        densify_ops: number of DENSIFY ops.
    """

    path: str
    file_size: int
    gzip_size: int
    tensors: tuple
    ops: dict
    densify_ops: int

    @property
    def sparse_tensors(self):
        return tuple(t for t in self.tensors if t.sparse)

    def find(self, substring):
        """Tensors whose name contains ``substring``."""
        return tuple(t for t in self.tensors if substring in t.name)

    def to_dict(self):
        """Plain data (JSON-serializable)."""
        return {
            "path": self.path, "file_size": self.file_size,
            "gzip_size": self.gzip_size, "ops": dict(self.ops),
            "densify_ops": self.densify_ops,
            "tensors": [dict(dataclasses.asdict(t), shape=list(t.shape),
                             block=list(t.block) if t.block else None,
                             sparsity=t.sparsity) for t in self.tensors],
        }

    def __str__(self):
        header = ("tensor", "op", "shape", "dtype", "encoding", "stored", "nonzero",
                  "sparsity")
        rows = []
        for t in self.tensors:
            if t.sparse:
                enc = ("sparse" + (" block " + "x".join(map(str, t.block))
                                   if t.block else " random")
                       + (" +DENSIFY" if t.densified else " (native)"
                          if t.native_sparse else " (UNSUPPORTED consumer)"))
            else:
                enc = "dense"
            name = t.name if len(t.name) <= 48 else "..." + t.name[-45:]
            rows.append((name, t.op, "x".join(map(str, t.shape)), t.dtype, enc,
                         str(t.stored_values), str(t.nonzeros), f"{t.sparsity:.1%}"))
        widths = [max(len(x) for x in col) for col in zip(header, *rows)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [f"{self.path}: {self.file_size:,} bytes, gzip {self.gzip_size:,} "
                 f"bytes; {self.densify_ops} DENSIFY op(s); "
                 f"{len(self.sparse_tensors)}/{len(self.tensors)} weight tensors "
                 "sparse-encoded",
                 fmt.format(*header), "  ".join("-" * w for w in widths)]
        lines += [fmt.format(*r) for r in rows]
        lines.append("ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.ops.items())))
        return "\n".join(lines)


def _block_shape(sparsity, rank):
    if sparsity.blockMap is None or len(sparsity.blockMap) == 0:
        return None
    block = [1] * rank
    for pos, dim in enumerate(sparsity.traversalOrder):
        dim = int(dim)
        if dim >= rank:
            block[int(sparsity.blockMap[dim - rank])] = int(
                sparsity.dimMetadata[pos].denseSize)
    return tuple(block)


def _buffer_bytes(raw, buf):
    if buf is None:
        return None
    if buf.data is not None and len(buf.data):
        return np.asarray(buf.data, dtype=np.uint8).tobytes()
    offset = int(getattr(buf, "offset", 0) or 0)
    size = int(getattr(buf, "size", 0) or 0)
    if offset > 1 and size:
        return raw[offset:offset + size]
    return None


def inspect_tflite(path):
    """Describes how each weight tensor of a ``.tflite`` file is stored.

    Args:
        path: a ``.tflite`` file (or its bytes).

    Returns:
        A `TFLiteInspection`: ``print()`` it for a table, use ``.tensors``
        (`TFLiteTensorInfo` rows), ``.densify_ops``, ``.file_size``,
        ``.gzip_size`` or ``.to_dict()``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a TFLite flatbuffer.

    Example:
        >>> info = kg.export.inspect_tflite("model.tflite")
        >>> print(info)
        >>> [t.name for t in info.tensors if t.native_sparse]
    """
    if isinstance(path, (bytes, bytearray)):
        raw, path = bytes(path), "<bytes>"
    else:
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"No such file: {path!r}.")
        with open(path, "rb") as f:
            raw = f.read()
    if len(raw) < 8 or raw[4:8] != b"TFL3":
        raise ValueError(
            f"{path!r} is not a TFLite model (expected a flatbuffer with the "
            "'TFL3' identifier, as written by keras_gap.export.to_tflite).")
    schema = _schema()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(raw, 0))
    op_names = _enum_names(schema.BuiltinOperator)
    type_names = _enum_names(schema.TensorType)

    def opname(op):
        code = model.operatorCodes[op.opcodeIndex]
        value = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        name = op_names.get(value, str(value))
        if name == "CUSTOM" and code.customCode:
            name = "CUSTOM:" + code.customCode.decode(errors="replace")
        return name

    ops_count, infos = {}, []
    for graph in model.subgraphs or []:
        consumers = {}
        for op in graph.operators or []:
            name = opname(op)
            ops_count[name] = ops_count.get(name, 0) + 1
            for idx in (op.inputs if op.inputs is not None else []):
                if int(idx) >= 0:
                    consumers.setdefault(int(idx), []).append((name, op))

        def chain(index, depth=0):
            uses = consumers.get(index, [])
            if not uses:
                return "(none)", False
            name, op = uses[0]
            if name in _PASS_OPS and depth < 3 and op.outputs is not None:
                rest, dens = chain(int(op.outputs[0]), depth + 1)
                return f"{name} -> {rest}", dens or name == "DENSIFY"
            return " / ".join(sorted({n for n, _ in uses})), False

        for index, tensor in enumerate(graph.tensors or []):
            data = _buffer_bytes(raw, model.buffers[tensor.buffer]
                                 if tensor.buffer < len(model.buffers) else None)
            shape = tuple(int(d) for d in (tensor.shape if tensor.shape is not None else []))
            if data is None or (len(shape) < 2 and tensor.sparsity is None):
                continue
            op, densified = chain(index)
            if op == "(none)":
                continue
            dtype = type_names.get(int(tensor.type), str(tensor.type))
            np_type = _NUMPY_TYPES.get(dtype)
            if np_type is not None:
                values = np.frombuffer(data, dtype=np_type)
                stored, nonzeros = int(values.size), int(np.count_nonzero(values))
            else:
                stored = nonzeros = -1
            tname = tensor.name.decode(errors="replace") if isinstance(
                tensor.name, bytes) else str(tensor.name)
            infos.append(TFLiteTensorInfo(
                name=tname, op=op, shape=shape, dtype=dtype,
                sparse=tensor.sparsity is not None,
                block=(_block_shape(tensor.sparsity, len(shape))
                       if tensor.sparsity is not None else None),
                densified=densified, num_elements=int(np.prod(shape)) if shape else 1,
                stored_values=stored, nonzeros=nonzeros))
    return TFLiteInspection(
        path=path, file_size=len(raw), gzip_size=len(gzip.compress(raw, 9)),
        tensors=tuple(infos), ops=ops_count, densify_ops=ops_count.get("DENSIFY", 0))
