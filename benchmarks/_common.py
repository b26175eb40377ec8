"""Provenance, shared flags, quick presets and seeding for every script in benchmarks/.

Every results file (and every cached row of benchmarks/results/*_runs.jsonl)
records ``provenance()``: the git commit and whether the tree was dirty, the
versions of keras / keras-gap / tensorflow / jax / numpy, the Keras backend,
the date (UTC, ISO 8601), the exact command line and every flag value, and the
machine (CPU model, cores, load average). ``commit_label`` names a run's code
in tables; ``provenance_line`` is the sentence a results file prints.

Rows written before provenance was recorded have none; ``commit_label`` calls
them "commit unknown", and they count as one more, unknown, commit.
"""

import datetime
import functools
import hashlib
import importlib.metadata
import os
import subprocess
import sys

from absl import flags

from _machine import machine_info

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# Results the benchmarks write themselves: not part of the code that produced them.
RESULTS_PATHSPEC = ":(exclude)benchmarks/results"
UNKNOWN = "unknown"


def _git(*args):
    try:
        proc = subprocess.run(["git", "-C", REPO, *args], capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


@functools.lru_cache(maxsize=None)
def git_state():
    """{"commit", "dirty", "changed_files", "diff_sha1"} of the checkout this script is in.

    ``dirty``: tracked files differ from HEAD, or files git does not ignore are
    untracked, outside benchmarks/results/ (the benchmarks' own output).
    ``diff_sha1`` hashes those differences (the diff and the untracked files'
    contents), so two runs on the same dirty tree have the same value. Computed
    once per process, at the first call (before the run writes anything).
    Outside a git checkout every value is None.
    """
    head = _git("rev-parse", "HEAD")
    if head is None:
        return {"commit": None, "dirty": None, "changed_files": None, "diff_sha1": None}
    status = _git("status", "--porcelain", "--", ".", RESULTS_PATHSPEC) or b""
    changed = [line[3:].decode(errors="replace") for line in status.splitlines()]
    digest = None
    if changed:
        h = hashlib.sha1(_git("diff", "HEAD", "--binary", "--", ".", RESULTS_PATHSPEC) or b"")
        untracked = _git("ls-files", "--others", "--exclude-standard", "-z", "--", ".",
                         RESULTS_PATHSPEC) or b""
        for name in sorted(n for n in untracked.split(b"\0") if n):
            h.update(name)
            try:
                with open(os.path.join(REPO, name.decode()), "rb") as f:
                    h.update(f.read())
            except OSError:
                pass
        digest = h.hexdigest()
    return {"commit": head.decode().strip(), "dirty": bool(changed),
            "changed_files": changed[:50], "diff_sha1": digest}


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions():
    """Installed versions (None: not installed); keras-gap's from its source tree."""
    import keras

    import keras_gap
    out = {"keras": keras.__version__, "keras_gap": keras_gap.__version__,
           "python": sys.version.split()[0]}
    for name, dist in (("tensorflow", "tensorflow"), ("jax", "jax"), ("numpy", "numpy")):
        module = sys.modules.get(name)
        out[name] = getattr(module, "__version__", None) or _version(dist)
    return out


def flag_values(values=None):
    """Every flag the benchmark scripts define (absl's own logging flags left out):
    ``{"values": {name: value}, "given": [names set on the command line]}``."""
    values = values or flags.FLAGS
    out, given = {}, []
    for module, module_flags in values.flags_by_module_dict().items():
        if module.startswith("absl."):
            continue
        for flag in module_flags:
            value = flag.value
            out[flag.name] = list(value) if isinstance(value, (list, tuple)) else value
            if flag.present:
                given.append(flag.name)
    return {"values": dict(sorted(out.items())), "given": sorted(set(given))}


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def provenance():
    """Where a result came from: code, versions, backend, date, flags, machine."""
    import keras
    machine = machine_info()
    machine["load_average_now"] = machine.pop("load_average_at_start")
    fl = flag_values()
    return {"git": git_state(), "versions": versions(), "backend": keras.backend.backend(),
            "date": utc_now(), "argv": list(sys.argv), "flags": fl["values"],
            "flags_given": fl["given"], "machine": machine}


def commit_label(prov):
    """"abc1234def0", "abc1234def0+dirty(1a2b3c4d)" or "commit unknown"."""
    git = (prov or {}).get("git") or {}
    if not git.get("commit"):
        return "commit unknown"
    label = git["commit"][:12]
    if git.get("dirty"):
        label += f"+dirty({(git.get('diff_sha1') or '?')[:8]})"
    return label


def code_key(prov):
    """What must match for two rows to come from the same code: (commit, diff)."""
    git = (prov or {}).get("git") or {}
    if not git.get("commit"):
        return (UNKNOWN, None)
    return (git["commit"], git.get("diff_sha1") if git.get("dirty") else None)


def provenance_line(provs):
    """One Markdown sentence naming the commit(s), versions, backend and dates of ``provs``
    (one provenance dict, or a list: one per row, None for rows that have none)."""
    provs = provs if isinstance(provs, list) else [provs]
    if not any(provs):
        return ("Commit unknown: written before the benchmarks recorded their provenance "
                "(commit, versions, flags).")
    counts = {}
    for p in provs:
        counts[commit_label(p)] = counts.get(commit_label(p), 0) + 1
    if len(counts) == 1:
        commits = f"`{next(iter(counts))}`"
    else:
        commits = "MIXED: " + ", ".join(f"`{c}` ({n} rows)" for c, n in sorted(counts.items()))
    known = [p for p in provs if p]
    parts = [f"Commit: {commits}"]
    if known:
        v = known[-1]["versions"]
        parts.append(f"keras {v['keras']}, keras-gap {v['keras_gap']}, tensorflow "
                     f"{v['tensorflow']}, jax {v['jax']}, backend {known[-1]['backend']}")
        dates = sorted(p["date"] for p in known)
        parts.append(dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}")
    if len(known) < len(provs):
        parts.append(f"{len(provs) - len(known)} row(s) without provenance (written "
                     "before it was recorded)")
    return "; ".join(parts) + "."


def apply_quick(presets):
    """``--quick``: sets each flag in ``presets`` that the command line did not set
    (so ``--quick --seeds 2`` runs the quick sizes with two seeds)."""
    for name, value in presets.items():
        if not flags.FLAGS[name].present:
            setattr(flags.FLAGS, name, value)


def set_seed(seed):
    """Seeds Python's, NumPy's and the backend's random generators, and Keras'
    global seed generator (initializers, dropout, ``fit``'s shuffling)."""
    import keras
    keras.utils.set_random_seed(int(seed))


def weights_fingerprint(model):
    """{"sha1", "sum"} of every weight of ``model`` in order: two runs trained the
    same way give the same sha1 (bit for bit) and a different seed gives another."""
    import numpy as np
    h, total = hashlib.sha1(), 0.0
    for w in model.weights:
        a = np.ascontiguousarray(np.asarray(w), dtype=np.float32)
        h.update(a.tobytes())
        total += float(a.astype(np.float64).sum())
    return {"sha1": h.hexdigest(), "sum": total}


def define_fashion_training_flags(quick_help):
    """The data / training / latency flags of structured.py and growing.py."""
    flags.DEFINE_bool("quick", False, quick_help)
    flags.DEFINE_integer("seeds", 3, "seeds per configuration (first_seed .. first_seed+N-1)")
    flags.DEFINE_integer("first_seed", 0, "first seed (the latency runs time its models)")
    flags.DEFINE_integer("train_images", 9000, "training images (the first N of the train "
                         "split)")
    flags.DEFINE_integer("val_images", 2000, "validation images held out from the end of "
                         "the train split")
    flags.DEFINE_integer("test_images", None, "test images (default: all 10,000)")
    flags.DEFINE_integer("epochs", 5, "training epochs for every method")
    flags.DEFINE_integer("batch_size", 64, "batch size")
    flags.DEFINE_float("learning_rate", 2e-3, "peak Adam learning rate (cosine decay)")
    flags.DEFINE_integer("latency_runs", 200, "timed runs per latency measurement")
    flags.DEFINE_string("output_dir", os.path.join(HERE, "results"),
                        "where the results files go")
