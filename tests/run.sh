#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs them.
#   bash tests/run.sh           # default suite: TensorFlow (all tests) + JAX (core tests)
#                               # + PyTorch (core tests; install_deps.sh installs torch)
#   bash tests/run.sh --slow    # also the tests marked slow
# Extra arguments after the options are passed to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MARK="not slow"
if [ "${1:-}" = "--slow" ]; then MARK=""; shift; fi

bash tests/install_deps.sh --mnist  # MNIST for the ViT example test (skipped if absent)
export TF_CPP_MIN_LOG_LEVEL=2
WORKERS="${PYTEST_WORKERS:-2}"

run_pytest() {  # pytest's exit 5 ("no tests collected") is a failure here too
  python -m pytest "$@" || { rc=$?; echo "pytest exited with $rc"; exit $rc; }
}

echo "=== keras-gap tests, TensorFlow backend (all tests) ==="
KERAS_BACKEND=tensorflow run_pytest tests -q -n "$WORKERS" --dist loadfile \
  ${MARK:+-m "$MARK"} "$@"

echo "=== keras-gap tests, JAX backend (core tests) ==="
KERAS_BACKEND=jax run_pytest tests -q -n "$WORKERS" --dist loadfile \
  -m "core${MARK:+ and $MARK}" "$@"

echo "=== keras-gap tests, PyTorch backend (core tests) ==="
python -c "import torch" 2>/dev/null || {
  echo "torch does not import: bash tests/install_deps.sh installs it (torch==2.13.0)" >&2
  exit 1; }
KERAS_BACKEND=torch run_pytest tests -q -n "$WORKERS" --dist loadfile \
  -m "core${MARK:+ and $MARK}" "$@"
