"""Importers for published checkpoints: safetensors files -> plain Linen parameter trees.

`safetensors_io` reads single-file and sharded (``model.safetensors.index.json``)
checkpoints lazily and converts them through a key map with shape checks; `hf_t5` and
`hf_bert` hold the key maps of the Hugging Face T5 encoder and BERT layouts, `dit`,
`sd_vae` and `taming` those of the official DiT, the Stable Diffusion VAE and
taming-transformers' VQGANs (`torch_pickle` reads their PyTorch pickles and Lightning
checkpoints). Nothing here needs torch.
"""

from jaxgen.convert.safetensors_io import (CheckpointReader, convert_tensors,
                                           resolve_safetensors)

__all__ = ["CheckpointReader", "convert_tensors", "resolve_safetensors"]
