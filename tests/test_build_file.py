"""BUILD must declare every keras_gap module and every test file (and nothing
that does not exist). Plain text parsing: no Bazel needed."""

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "BUILD")

_RULE = re.compile(r"^(py_library|py_test|py_binary)\(\s*$(.*?)^\)", re.M | re.S)
_NAME = re.compile(r'^\s*name\s*=\s*"([^"]+)"', re.M)
_LIST_ATTR = r'^\s*{}\s*=\s*(glob\()?\[(.*?)\]'
_STRING = re.compile(r'"([^"]*)"')


def _strip_comments(text):
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def parse_build(text):
    """[(kind, name, {"srcs": [...], "data": [...], "main": str, "deps": [...],
    "globs": [...]})] for every py_* rule."""
    rules = []
    for kind, body in _RULE.findall(_strip_comments(text)):
        name = _NAME.search(body)
        attrs = {"name": name.group(1) if name else None, "globs": []}
        for attr in ("srcs", "data", "deps"):
            attrs[attr] = []
            for is_glob, items in re.findall(_LIST_ATTR.format(attr), body, re.M | re.S):
                values = _STRING.findall(items)
                if is_glob:
                    attrs["globs"].extend(values)
                else:
                    # deps may hold requirement("pkg") calls: keep labels only
                    values = [v for v in values if attr != "deps" or v.startswith(":")
                              or v.startswith("//")]
                    if attr == "deps":
                        values = [v for v in values if not re.search(
                            r'requirement\(\s*"%s"' % re.escape(v), items)]
                    attrs[attr].extend(values)
        main = re.search(r'^\s*main\s*=\s*"([^"]+)"', body, re.M)
        attrs["main"] = main.group(1) if main else None
        rules.append((kind, attrs["name"], attrs))
    return rules


@pytest.fixture(scope="module")
def rules():
    assert os.path.exists(BUILD), "BUILD file is missing at the repository root"
    with open(BUILD, encoding="utf-8") as f:
        parsed = parse_build(f.read())
    assert parsed, "BUILD declares no py_library / py_test rules"
    return parsed


def _rel(path):
    return os.path.relpath(path, ROOT).replace(os.sep, "/")


def _declared(rules, kinds, attr="srcs"):
    return {src for kind, _, a in rules if kind in kinds for src in a[attr]}


def test_every_keras_gap_module_has_a_py_library(rules):
    modules = {_rel(p) for p in glob.glob(os.path.join(ROOT, "keras_gap", "**", "*.py"),
                                          recursive=True)}
    assert modules, "no keras_gap modules found"
    missing = sorted(modules - _declared(rules, {"py_library"}))
    assert not missing, f"keras_gap modules missing from BUILD py_library srcs: {missing}"


def test_every_test_file_has_a_py_test(rules):
    tests = {_rel(p) for p in glob.glob(os.path.join(ROOT, "tests", "test_*.py"))}
    declared = _declared(rules, {"py_test"})
    missing = sorted(tests - declared)
    assert not missing, f"test files missing from BUILD py_test srcs: {missing}"
    for kind, name, attrs in rules:
        if kind == "py_test":
            assert len(attrs["srcs"]) == 1 and attrs["main"] == attrs["srcs"][0], \
                f"py_test {name!r} must have one src and main = that src"


def test_build_names_only_existing_files(rules):
    named = set()
    for _, _, attrs in rules:
        named.update(attrs["srcs"] + attrs["data"])
        if attrs["main"]:
            named.add(attrs["main"])
    absent = sorted(p for p in named if not os.path.isfile(os.path.join(ROOT, p)))
    assert not absent, f"BUILD names files that do not exist: {absent}"
    for _, name, attrs in rules:
        for pattern in attrs["globs"]:
            assert glob.glob(os.path.join(ROOT, pattern), recursive=True), \
                f"glob {pattern!r} in target {name!r} matches no file"


def test_targets_are_unique_and_deps_resolve(rules):
    names = [name for _, name, _ in rules]
    assert None not in names, "every rule needs a name"
    dupes = sorted({n for n in names if names.count(n) > 1})
    assert not dupes, f"duplicate target names: {dupes}"
    known = set(names)
    for _, name, attrs in rules:
        for dep in attrs["deps"]:
            if dep.startswith(":"):
                assert dep[1:] in known, f"{name!r} depends on unknown target {dep!r}"


def test_library_deps_have_no_cycle(rules):
    graph = {name: [d[1:] for d in attrs["deps"] if d.startswith(":")]
             for kind, name, attrs in rules if kind == "py_library"}
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in graph.get(node, []):
            if state.get(nxt) == "open":
                raise AssertionError(f"dependency cycle: {' -> '.join(path + [nxt])}")
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_parser_catches_a_missing_module():
    """The checks above are only useful if the parser really reads srcs."""
    text = ('py_library(\n    name = "a",\n    srcs = ["keras_gap/a.py"],\n'
            '    deps = [":b", requirement("keras")],\n)\n'
            'py_test(\n    name = "t",\n    srcs = ["tests/test_t.py"],  # comment\n'
            '    main = "tests/test_t.py",\n    data = glob(["x/*"]),\n)\n')
    parsed = parse_build(text)
    assert [(k, n) for k, n, _ in parsed] == [("py_library", "a"), ("py_test", "t")]
    assert parsed[0][2]["srcs"] == ["keras_gap/a.py"] and parsed[0][2]["deps"] == [":b"]
    assert parsed[1][2]["main"] == "tests/test_t.py" and parsed[1][2]["globs"] == ["x/*"]
