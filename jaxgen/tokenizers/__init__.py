"""Image/video tokenizers: encoder/decoder networks, quantizers and the Tokenizer interface."""
