"""pytest configuration for keras-gap.

The backend is chosen with ``KERAS_BACKEND`` (tensorflow by default) before
keras is imported. Markers:

* ``core``: backend-agnostic tests that must pass on TensorFlow and JAX
  (CI runs ``KERAS_BACKEND=jax python -m pytest -m core tests``).
* ``slow``: longer tests (still CPU-sized).
* ``tfmot``: needs tensorflow-model-optimization (run in a subprocess).
* ``torch``: needs PyTorch; skipped when it is not installed.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


def pytest_configure(config):
    for marker, text in (
        ("core", "backend-agnostic core test; must pass on TensorFlow and JAX"),
        ("slow", "slower test (seconds to tens of seconds on 2 CPU cores)"),
        ("tfmot", "needs tensorflow-model-optimization (runs it in a subprocess)"),
        ("torch", "needs PyTorch; skipped when torch is not installed"),
    ):
        config.addinivalue_line("markers", f"{marker}: {text}")
    # Noise from keras' TF backend converting variables with np.array().
    config.addinivalue_line(
        "filterwarnings",
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


def pytest_report_header(config):
    import keras
    return f"keras {keras.__version__}, backend: {keras.backend.backend()}"


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Every test starts from the same seed and a clean name scope."""
    import keras
    keras.backend.clear_session()
    keras.utils.set_random_seed(1234)
    yield
