"""Every code block in README.md runs as written (issue 14), so the README cannot rot.

What runs:
* every fenced ```python block, as written, in a fresh Python process (the backend comes
  from KERAS_BACKEND; ``KERAS_GAP_QUIET=1`` keeps the output readable);
* in ```bash blocks, the lines that are ``keras-gap`` commands (run as
  ``python -m keras_gap.cli ...``, optional arguments written ``[--flag]`` left out);
  other shell lines (installers, the test runner, the
  demo) are listed by `test_readme_inventory` but not run here (tests/test_examples.py runs
  the demo in its --fast mode).

Blocks of one README section (``## ...`` heading) run in order in one temporary working
directory, so a ``keras-gap`` line can read the files the Python block before it wrote.

Convention for a block that truly cannot run in CI: put an HTML comment right before its
opening fence, with the reason::

    <!-- readme-test: skip (needs a GPU with TensorRT) -->
    ```python
    ...

Skipped blocks are listed, with their reasons, by `test_readme_inventory` (``-rs`` shows
them as skips). Keep README blocks small: a slice of Fashion-MNIST
(``kg.datasets.load_numpy("fashion_mnist", "train", limit=2000)``) or random arrays, a few
epochs, well under 30 s each. The whole README is marked slow as one test per section;
the Quickstart section is the fast subset that always runs.
"""

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<reason>[^)]*)\)\s*-->")
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")
FAST_SECTIONS = ("Quickstart (tf-mot flow)",)
TIMEOUT_S = 300


def parse_readme(text):
    """[(section, index, lang, code, skip_reason)] for every fenced block, in order."""
    blocks, section, lines, i = [], "(top)", text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        match = FENCE.match(line)
        if match:
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            if j == len(lines):
                raise ValueError(f"README.md: unclosed code block at line {i + 1}")
            k = i - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            skip = SKIP.search(lines[k]) if k >= 0 else None
            index = sum(1 for b in blocks if b[0] == section)
            blocks.append((section, index, match.group("lang"), "\n".join(lines[i + 1:j]),
                           skip.group("reason").strip() if skip else None))
            i = j
        i += 1
    return blocks


def cli_lines(code):
    """The keras-gap command lines of a bash block (comments and optional ``[...]``
    arguments removed)."""
    out = []
    for line in code.splitlines():
        line = re.sub(r"\s*\[[^\]]*\]", "", line.split(" #", 1)[0]).strip()
        if line.startswith("keras-gap "):
            out.append(shlex.split(line)[1:])
    return out


BLOCKS = parse_readme(README.read_text(encoding="utf-8"))
SECTIONS = list(dict.fromkeys(b[0] for b in BLOCKS
                              if b[2] == "python" or (b[2] == "bash" and cli_lines(b[3]))))


def _env():
    env = dict(os.environ, KERAS_GAP_QUIET="1", PYTHONUNBUFFERED="1")
    env.setdefault("KERAS_BACKEND", "tensorflow")
    return env


def _run(args, cwd, what):
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    if proc.returncode != 0:
        pytest.fail(f"README {what} failed with exit status {proc.returncode}:\n"
                    f"--- stdout (tail) ---\n{proc.stdout[-3000:]}\n"
                    f"--- stderr (tail) ---\n{proc.stderr[-5000:]}")
    return proc


def _params():
    out = []
    for section in SECTIONS:
        marks = [] if section in FAST_SECTIONS else [pytest.mark.slow]
        out.append(pytest.param(section, marks=marks, id=section))
    return out


@pytest.mark.parametrize("section", _params())
def test_readme_section_runs(section, tmp_path):
    blocks = [b for b in BLOCKS if b[0] == section]
    ran = 0
    for _, index, lang, code, skip in blocks:
        what = f"section {section!r}, block {index} ({lang})"
        if skip is not None:
            continue
        if lang == "python":
            script = tmp_path / f"block_{index}.py"
            script.write_text(code + "\n", encoding="utf-8")
            _run([sys.executable, str(script)], tmp_path, what)
            ran += 1
        elif lang == "bash":
            for args in cli_lines(code):
                _run([sys.executable, "-m", "keras_gap.cli", *args], tmp_path,
                     f"{what}: keras-gap {' '.join(args)}")
                ran += 1
    if not ran:
        pytest.skip("every block of this section is marked readme-test: skip: " + "; ".join(
            f"block {b[1]}: {b[4]}" for b in blocks if b[4]))


def test_readme_inventory():
    """The README has runnable blocks, each skip names a reason, and what is not run is
    listed (printed with -s)."""
    python_blocks = [b for b in BLOCKS if b[2] == "python"]
    assert python_blocks, "README.md has no python blocks"
    assert FAST_SECTIONS[0] in SECTIONS, "the Quickstart section (fast subset) is missing"
    for section, index, lang, code, skip in BLOCKS:
        if skip is not None:
            assert skip, f"{section} block {index}: readme-test: skip needs a reason"
            print(f"skipped: {section} block {index} ({lang}): {skip}")
        elif lang == "bash":
            others = [line for line in code.splitlines()
                      if line.strip() and not line.lstrip().startswith(("#", "keras-gap "))]
            for line in others:
                print(f"not run here: {section} block {index}: {line.strip()}")


def test_parser_understands_the_conventions():
    text = "\n".join([
        "## A", "```python", "print(1)", "```", "",
        "<!-- readme-test: skip (needs a GPU) -->", "", "```python", "import cupy", "```",
        "## B", "```bash", "pip install x", "keras-gap report m.keras   # the report",
        "keras-gap export m.keras --tflite o.tflite [--quantize int8]", "```"])
    blocks = parse_readme(text)
    assert [(b[0], b[1], b[2], b[4]) for b in blocks] == [
        ("A", 0, "python", None), ("A", 1, "python", "needs a GPU"), ("B", 0, "bash", None)]
    assert cli_lines(blocks[2][3]) == [["report", "m.keras"],
                                       ["export", "m.keras", "--tflite", "o.tflite"]]
    with pytest.raises(ValueError, match="unclosed"):
        parse_readme("```python\nprint(1)\n")
