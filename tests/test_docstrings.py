"""Docstring Examples of the public API (issue 14): every Example parses as Python, and the
self-contained ones (those that show their output) run as doctests.

Examples that need a trained model, data files or TFLite files from earlier steps
(``pruned.fit(...)``, ``to_tflite(pruned, ...)``) are only compiled here; the README blocks
(tests/test_readme.py) and the examples (tests/test_examples.py) run those flows.
"""

import doctest
import inspect

import keras
import numpy as np
import pytest

import keras_gap as kg

_SUBMODULES = ("export", "datasets", "criteria", "distributions", "masks", "registry",
               "gradients", "console")


def _public_objects():
    objects = {}

    def add(module, names):
        for name in names:
            obj = getattr(module, name, None)
            if obj is None or inspect.ismodule(obj) or \
                    not getattr(obj, "__module__", "").startswith("keras_gap"):
                continue
            objects[f"{module.__name__}.{name}"] = obj
            if inspect.isclass(obj):
                for attr, value in vars(obj).items():
                    if not attr.startswith("_") and inspect.isfunction(value):
                        objects[f"{module.__name__}.{name}.{attr}"] = value

    add(kg, kg.__all__)
    for sub in _SUBMODULES:
        module = getattr(kg, sub)
        names = getattr(module, "__all__", None)
        if names is None:  # module without __all__: what it defines, not what it imports
            names = [n for n, v in vars(module).items() if not n.startswith("_")
                     and getattr(v, "__module__", None) == module.__name__]
        add(module, names)
    return objects


OBJECTS = _public_objects()
PARSER = doctest.DocTestParser()
WITH_EXAMPLES = {name: obj for name, obj in sorted(OBJECTS.items())
                 if PARSER.get_examples(inspect.getdoc(obj) or "")}

# Self-contained Examples that show their output: run as doctests.
RUN = [
    "keras_gap.ConstantSparsity", "keras_gap.PolynomialDecay", "keras_gap.GaPPruningSchedule",
    "keras_gap.console.LogInt", "keras_gap.console.LogFraction",
    "keras_gap.distributions.layer_sparsities", "keras_gap.masks.num_to_keep",
    "keras_gap.registry.is_supported", "keras_gap.registry.get_prunable_weights",
]


def _globs(obj):
    module = inspect.getmodule(obj)
    globs = dict(vars(module)) if module else {}
    globs.update(kg=kg, keras=keras, np=np, datasets=kg.datasets, console=kg.console)
    return globs


def test_public_api_has_examples():
    assert len(WITH_EXAMPLES) >= 40, sorted(WITH_EXAMPLES)
    missing = [name for name in RUN if name not in WITH_EXAMPLES]
    assert not missing, f"listed in RUN but without an Example: {missing}"


@pytest.mark.core
def test_every_example_parses():
    broken = []
    for name, obj in WITH_EXAMPLES.items():
        source = "".join(e.source for e in PARSER.get_examples(inspect.getdoc(obj)))
        try:
            compile(source, f"<{name} Example>", "exec")
        except SyntaxError as e:
            broken.append(f"{name}: {e}")
    assert not broken, "Examples that are not valid Python:\n" + "\n".join(broken)


@pytest.mark.core
@pytest.mark.parametrize("name", RUN)
def test_example_runs(name):
    obj = OBJECTS[name]
    test = PARSER.get_doctest(inspect.getdoc(obj), _globs(obj), name, None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out = []
    runner.run(test, out=out.append)
    assert runner.failures == 0, "".join(out)
