"""Builds benchmarks/README.md from the latest results in benchmarks/results/.

Every table in the generated README is copied from a results file that a
benchmark script wrote; nothing is typed by hand. Run after any benchmark:

    python benchmarks/collect.py

Every section says which commit(s) produced it, read from the provenance the
benchmark recorded in its .json (benchmarks/_common.py): per row where rows
carry their own (the run cache of gap_vs_baselines.py, prunability.py's
merged rows), else for the whole file. Results written before provenance was
recorded say "commit unknown". A results file whose rows come from more than
one commit (an unknown one counts as one more) is an error naming the file
and its commits, unless ``--allow_mixed_commits``: then its section is built
and says MIXED with the rows of each commit.
"""

import argparse
import json
import os
import sys

import _common

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

# (results stem, title, command that regenerates it)
BENCHMARKS = [
    ("gap_vs_baselines", "GaP vs dense and gradual magnitude pruning (accuracy, training MACs)",
     "python benchmarks/gap_vs_baselines.py --epochs 8,24 (the commands of each part are "
     "in the section)"),
    ("gap_vs_baselines_8ep", "GaP vs dense and GMP at 8 epochs, rerun with provenance "
     "(2026-12-07)", "python benchmarks/gap_vs_baselines.py --epochs 8 --seeds 3 --sparsities "
     "0.9,0.8 --variants gmp,cgap,cgap+fresh,cgap+fresh+hot,pgap+fresh+hot,gmp+global,"
     "cgap+global+fresh+hot --results_name gap_vs_baselines_8ep"),
    ("fggp_vs_gmp", "FGGP vs gradual magnitude pruning (accuracy)",
     "python benchmarks/fggp_vs_gmp.py"),
    ("overhead", "Training-step overhead of the pruning wrapper, mask-update cost",
     "python benchmarks/overhead.py"),
    ("tflite_latency", "TFLite latency and file size: dense vs sparse",
     "python benchmarks/tflite_latency.py"),
    ("backend_export", "The same model exported from TensorFlow, JAX and PyTorch (TFLite latency)",
     "python benchmarks/backend_export.py"),
    ("demo", "The demo (main job): dense vs GMP vs C-GaP, exported to TFLite",
     "python examples/demo.py --output_dir benchmarks/results/demo"),
    ("structured", "Channel pruning: dense vs channel GMP vs channel C-GaP, materialized",
     "python benchmarks/structured.py"),
    ("heads", "Attention heads and FFN units removed: dense vs channel GMP / C-GaP (fortunes)",
     "python benchmarks/heads.py --seeds 2 --epochs 8"),
    ("prunability", "Prunability of keras.applications models (channel groups, materialize)",
     "python benchmarks/prunability.py"),
    ("kerashub_prunability", "KerasHub models pruned in place (every family that builds "
     "offline)", "python benchmarks/kerashub_prunability.py"),
    ("gap_kerashub", "C-GaP on KerasHub's BertTextClassifier, real text (fortunes topics)",
     "python examples/gap_kerashub.py --seeds 1,2,3 --output_dir benchmarks/results"),
    ("oneshot_lm", "One-shot magnitude / Wanda / SparseGPT on a KerasHub GPT-2 (King James "
     "Bible)", "python benchmarks/oneshot_lm.py --epochs 2 --vocabulary 4000 "
     "--finetune_steps 100"),
    ("growing", "Growing networks vs dense, channel GMP / C-GaP, unstructured C-GaP",
     "python benchmarks/growing.py --seeds 3 --train_images 6000 --epochs 10, then the "
     "same with --reuse_from flags --retime --latency_rounds 7 (interleaved TFLite timing)"),
    ("pgap_parallel", "P-GaP in one process vs on Ray workers (time per round, accuracy)",
     "python benchmarks/pgap_parallel.py"),
]


class MixedCommitsError(ValueError):
    pass


def _json_path(stem):
    if stem == "demo":
        return os.path.join(RESULTS, "demo", "results.json")
    return os.path.join(RESULTS, stem + ".json")


def row_provenances(data):
    """One provenance dict (None: not recorded) per row of a results file: the rows'
    own where any row has one, else the file's for every row."""
    for key in ("runs", "rows"):
        rows = data.get(key)
        if isinstance(rows, list) and any(isinstance(r, dict) and "provenance" in r
                                          for r in rows):
            return [r.get("provenance") for r in rows]
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    return [data.get("provenance") or meta.get("provenance") or
            (data.get("config") or {}).get("provenance")]


def provenance_of(stem, allow_mixed):
    """The provenance sentence of a results file; MixedCommitsError when its rows
    come from several commits and ``allow_mixed`` is false."""
    path = _json_path(stem)
    if not os.path.exists(path):
        return "Commit unknown (no results .json to read it from)."
    with open(path) as f:
        provs = row_provenances(json.load(f))
    keys = {}
    for p in provs:
        keys.setdefault(_common.code_key(p), []).append(_common.commit_label(p))
    if len(keys) > 1 and not allow_mixed:
        found = ", ".join(f"{labels[0]} ({len(labels)} rows)" for labels in keys.values())
        raise MixedCommitsError(
            f"{os.path.relpath(path, HERE)} holds rows of {len(keys)} commits: {found}. "
            "Rerun the benchmark on one commit (gap_vs_baselines.py: a fresh "
            "--results_name, or the default --reuse_from=commit), or pass "
            "--allow_mixed_commits to build its table anyway (it then says MIXED).")
    return _common.provenance_line(provs)


def _demote_headings(text):
    return "\n".join("#" + line if line.startswith("#") else line
                     for line in text.splitlines())


def collect(allow_mixed=False):
    """Returns the README text for every benchmark that has results."""
    parts = ["# Benchmark results", "",
             "Generated by `python benchmarks/collect.py` from the files in `results/`; each "
             "section names the command that regenerates it and the commit(s) that "
             "produced it (\"commit unknown\": written before the benchmarks recorded "
             "their provenance). Dates and machines are inside each section, as the "
             "benchmark recorded them.", ""]
    for stem, title, command in BENCHMARKS:
        md = os.path.join(RESULTS, stem + ".md")
        if stem == "demo":
            md = os.path.join(RESULTS, "demo", "results.md")
        parts += [f"## {title}", "", f"Regenerate: `{command}`", ""]
        if not os.path.exists(md):
            parts += ["_Not run yet._", ""]
            continue
        parts += [f"Provenance: {provenance_of(stem, allow_mixed)}", ""]
        with open(md) as f:
            body = f.read()
        if stem == "demo":
            body = body.replace("](results.png)", "](results/demo/results.png)")
        parts += [_demote_headings(body).strip(), ""]
        png = os.path.join(RESULTS, stem + ".png")
        if os.path.exists(png):
            parts += [f"![{os.path.basename(stem)}](results/{stem}.png)", ""]
    return "\n".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--allow_mixed_commits", action="store_true",
                        help="build a table from rows of several commits (it says MIXED)")
    parser.add_argument("--output", default=os.path.join(HERE, "README.md"),
                        help="where the README goes (default: benchmarks/README.md)")
    args = parser.parse_args(argv)
    try:
        text = collect(args.allow_mixed_commits)
    except MixedCommitsError as e:
        sys.exit(f"collect.py: {e}")
    with open(args.output, "w") as f:
        f.write(text)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
