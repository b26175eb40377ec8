"""keras-gap: sparse training for Keras 3 (scheduled grow-and-prune, FGGP, export)."""

import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent

EXTRAS = {
    # Ranges CI tests (tests/run.sh: TensorFlow, JAX and PyTorch passes).
    "jax": ["jax>=0.10,<0.11", "jaxlib>=0.10,<0.11"],
    "torch": ["torch>=2.13,<2.15"],
    "tfmot": ["tensorflow-model-optimization>=0.8.0", "tf_keras>=2.18,<2.22"],
    "plots": ["matplotlib>=3.7"],
    "litert": ["ai-edge-litert>=1.0"],
    "distributed": ["ray>=2.9"],  # kg.gap.PGaPRunner (P-GaP copies on Ray workers)
    "hub": ["keras-hub>=0.32,<0.33"],  # KerasHub models (flops_report counts their blocks)
    "test": ["pytest>=7", "pytest-xdist>=3", "jax>=0.10,<0.11", "jaxlib>=0.10,<0.11",
             "matplotlib>=3.7", "tensorflow-model-optimization>=0.8.0",
             "tf_keras>=2.18,<2.22", "ai-edge-litert>=1.0",
             "ray>=2.9",  # 79 MB wheel, ~25 s to install (measured)
             "keras-hub>=0.32,<0.33"],
    "onnx": ["tf2onnx>=1.17", "onnx"],
}
EXTRAS["all"] = sorted({d for k, v in EXTRAS.items() if k not in ("torch", "onnx") for d in v})

setup(
    name="keras-gap",
    version="0.1.0",
    description="Sparse training for Keras 3: scheduled grow-and-prune (GaP), "
                "gradual pruning, FGGP, sparse TFLite export.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8")
    if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["keras_gap", "keras_gap.*"]),
    install_requires=[
        "keras>=3.15,<3.16",  # the release CI tests (private Keras uses: docs/KERAS_INTERNALS.md)
        "tensorflow>=2.18,<2.22",
        "tensorflow-datasets>=4.9",
        "tensorboard",
        "importlib_resources",
        "absl-py>=1.0",
        "numpy>=1.26",
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["keras-gap=keras_gap.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
