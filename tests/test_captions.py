"""Captions: attribute measurements on constructed images, short captions, the
deterministic re-captioner, caption files and their checks, `jaxgen recaption`, the
captioned dataset with ratio mixing through the grain pipeline, and prompt following."""

import json
import os

import ml_collections
import numpy as np
import pytest

from jaxgen import cli
from jaxgen.data import captions as C
from jaxgen.data import datasets, pipeline
from jaxgen.data.idx import DataError
from jaxgen.eval import classifier as clf_lib

from helpers import synthetic_fmnist

# Object intensities that measure dark / medium / light, and square sides that measure
# small / medium / large (area 0.25 / 0.41 / 0.73 of 28x28).
LEVELS = (100, 165, 215)
SIDES = (14, 18, 24)


def _square(side, level, patterned=False, left=None, size=28, channels=1):
  """A ``side`` x ``side`` object of mean intensity ``level`` on black; a +-40
  checkerboard when ``patterned``; centred unless ``left`` gives its first column."""
  img = np.zeros((size, size), np.float32)
  top = (size - side) // 2
  left = (size - side) // 2 if left is None else left
  block = np.full((side, side), level, np.float32)
  if patterned:
    block += 40 * np.where(np.add.outer(np.arange(side), np.arange(side)) % 2, 1, -1)
  img[top:top + side, left:left + side] = block
  return np.repeat(img.astype(np.uint8)[..., None], channels, -1)


def _images_for(targets):
  return np.stack([_square(SIDES[s], LEVELS[b], bool(t)) for b, s, t in
                   zip(targets["brightness"], targets["size"], targets["texture"])])


class IndexCaptioner:
  """A plugged captioner for tests: the caption names the index and the image sum."""

  def __call__(self, images, indices):
    return [f"detailed {i} sum {int(im.sum())}" for im, i in zip(images, indices)]


def function_captioner(images, indices):
  return ["x"] * len(images)


def test_attributes_of_constructed_images():
  imgs, want = [], []
  for b, level in enumerate(LEVELS):
    for s, side in enumerate(SIDES):
      for t in (0, 1):
        imgs.append(_square(side, level, bool(t)))
        want.append((b, s, t, 1))
  for p, left in ((0, 0), (1, 10), (2, 20)):  # an 8x8 object on the left / centre / right
    imgs.append(_square(8, 165, left=left))
    want.append((1, 0, 0, p))
  imgs.append(np.zeros((28, 28, 1), np.uint8))  # empty: dark, small, plain, centre
  want.append((0, 0, 0, 1))
  imgs = np.stack(imgs)
  got = C.measure_attributes(imgs)
  want = np.asarray(want)
  for j, name in enumerate(("brightness", "size", "texture", "position")):
    np.testing.assert_array_equal(got[name], want[:, j], err_msg=name)
    assert got[name].dtype == np.int32 and got[name].max() < len(C.ATTRIBUTES[name])
  raw = C.measure_raw(imgs[:1])
  np.testing.assert_allclose(raw["brightness"], [100.0])
  np.testing.assert_allclose(raw["size"], [14 * 14 / 784])
  np.testing.assert_allclose(raw["texture"], [0.0])
  # Colour images are measured on their grey mean; any H, W works.
  rgb = C.measure_attributes(np.repeat(imgs, 3, -1))
  assert all(np.array_equal(rgb[k], got[k]) for k in got)
  big = C.measure_attributes(_square(40, 215, True, size=64)[None])
  assert (big["brightness"][0], big["size"][0], big["texture"][0]) == (2, 1, 1)
  with pytest.raises(ValueError, match="uint8"):
    C.measure_attributes(imgs.astype(np.float32))


def test_short_captions_from_labels():
  assert [C.short_caption(k) for k in range(10)] == [
      "a t-shirt", "a pair of trousers", "a pullover", "a dress", "a coat", "a sandal",
      "a shirt", "a sneaker", "a bag", "an ankle boot"]
  names = ("apple", "car/truck", "ice_cream", "umbrella")
  assert [C.short_caption(k, names) for k in range(4)] == [
      "an apple", "a car", "an ice cream", "an umbrella"]


def _mentions(caption, table, attribute, value):
  return any(p in caption.lower() for p in table[attribute][value])


def test_recaptioning_is_deterministic_per_seed_and_example():
  images, labels = synthetic_fmnist(64, 3)
  images = images[..., None]
  idx = np.arange(1000, 1064)
  cap = C.FashionMnistCaptioner(seed=0)
  ref = cap(images, idx, labels=labels)
  assert len(ref) == 64 and len(set(ref)) > 32
  # Same captions in another batch composition and order, or from a new instance.
  perm = np.random.default_rng(0).permutation(64)
  again = C.FashionMnistCaptioner(seed=0)(images[perm], idx[perm], labels=labels[perm])
  assert [again[list(perm).index(i)] for i in range(64)] == ref
  halves = cap(images[:20], idx[:20], labels=labels[:20]) + cap(images[20:], idx[20:],
                                                                  labels=labels[20:])
  assert halves == ref
  other = C.FashionMnistCaptioner(seed=1)(images, idx, labels=labels)
  assert sum(a != b for a, b in zip(ref, other)) > 32
  # Each caption names the class and every measured attribute value.
  attrs = C.measure_attributes(images)
  tables = (C._ADJ, C._PRED, C._CLAUSE)  # pylint: disable=protected-access
  for j, caption in enumerate(ref):
    assert any(n in caption for n in C.FMNIST_NOUNS[labels[j]]), caption
    for a in C.CAPTIONED_ATTRIBUTES:
      value = C.ATTRIBUTES[a][attrs[a][j]]
      assert any(_mentions(caption, t, a, value) for t in tables), (caption, a, value)
    assert caption[0].isupper() and caption.endswith(".")
  # Without labels the class comes from the classifier (any images -> ids callable).
  by_clf = C.FashionMnistCaptioner(lambda x: np.full(len(x), 9), seed=0)(images[:5], idx[:5])
  assert all("ankle boot" in c for c in by_clf)


def test_choose_caption_mixes_at_the_configured_ratio():
  ex = {"image": np.zeros((2, 2, 1), np.uint8), "label": 1, "caption_short": "s",
        "caption_detailed": "d"}
  n = 10000
  for ratio in (0.0, 0.25, 0.9, 1.0):
    op = C.choose_caption(ratio)
    outs = [op(ex, np.random.default_rng((7, i))) for i in range(n)]
    frac = np.mean([o["caption"] == "d" for o in outs])
    tol = 4 * np.sqrt(ratio * (1 - ratio) / n)  # 4 binomial standard deviations
    assert abs(frac - ratio) <= tol, (ratio, frac)
    assert set(outs[0]) == {"image", "label", "caption"}
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    C.choose_caption(1.5)
  with pytest.raises(DataError, match="fashion_mnist_captions"):
    C.choose_caption(0.5)({"image": 0, "label": 0}, np.random.default_rng(0))


def test_caption_files_round_trip_and_bad_files_are_refused(tmp_path):
  d = str(tmp_path / "caps")
  with pytest.raises(DataError, match=f"{d}.*jaxgen recaption"):
    C.read_captions(d, "train", 3)
  C.write_captions(d, "train", ["a", "b \u00e9", "c\nd"], captioner="t", seed=1,
                   dataset="fashion_mnist_captions", fingerprint="f1")
  C.write_captions(d, "test", ["x"], captioner="t", seed=1, dataset="fashion_mnist_captions")
  assert C.read_captions(d, "train", 3, "f1") == ["a", "b \u00e9", "c\nd"]
  meta = json.load(open(os.path.join(d, "meta.json")))
  assert meta["splits"]["train"]["num_examples"] == 3 and "time" in meta["splits"]["test"]
  path = os.path.join(d, "train.jsonl")
  with pytest.raises(DataError, match=f"{path} holds 3 captions but split 'train' has 4"
                                      ".*jaxgen recaption"):
    C.read_captions(d, "train", 4)
  with pytest.raises(DataError, match=f"{d}/validation.jsonl does not exist.*jaxgen recaption"):
    C.read_captions(d, "validation", 1)
  with pytest.raises(DataError, match="another preparation.*jaxgen recaption"):
    C.read_captions(d, "train", 3, "other")
  with open(path, "a") as f:
    f.write("not json\n")
  with pytest.raises(DataError, match=f"{path} line 4 is not a JSON string"):
    C.read_captions(d, "train")
  with open(path, "w") as f:
    f.write('"a"\n"b"\n')  # truncated: meta.json says 3
  with pytest.raises(DataError, match=f"{path} holds 2 captions but .*meta.json says 3"):
    C.read_captions(d, "train")


def _captions_cfg(fake_fmnist_dir, data_dir, captions_dir="", ratio=0.0, pp=None):
  return ml_collections.ConfigDict(dict(
      name="fashion_mnist_captions", source_dir=fake_fmnist_dir, data_dir=data_dir,
      captions_dir=captions_dir, detailed_ratio=ratio,
      pp=f"choose_caption({ratio})|keep('label', 'caption')" if pp is None else pp))


def test_caption_config_is_checked_at_describe():
  spec = datasets.describe(_captions_cfg("", ""))
  assert spec.has_captions and spec.name == "fashion_mnist" and spec.splits["train"] == 60000
  assert not datasets.describe(ml_collections.ConfigDict(dict(name="fashion_mnist"))).has_captions
  with pytest.raises(DataError, match="captions_dir is empty.*jaxgen recaption"):
    datasets.describe(_captions_cfg("", "", ratio=0.5))
  with pytest.raises(DataError, match=r"choose_caption\(0.5\)"):
    datasets.describe(_captions_cfg("", "", "d", ratio=0.5, pp="pad(32)"))
  with pytest.raises(DataError, match=r"applies choose_caption\(0.2\).*detailed_ratio=0.5"):
    datasets.describe(_captions_cfg("", "", "d", ratio=0.5, pp="choose_caption(0.2)"))


def test_recaption_cli_and_captioned_pipeline(fake_fmnist_dir, data_dir, tmp_path, capsys):
  out = str(tmp_path / "caps")
  rc = cli.main(["recaption", "--data", "fashion_mnist_captions", "--out", out,
                 "--data-dir", data_dir, "--source-dir", fake_fmnist_dir,
                 "--captioner", "test_captions:IndexCaptioner", "--batch", "100"])
  assert rc == 0
  assert "detailed 0 sum" in capsys.readouterr().out
  meta = json.load(open(os.path.join(out, "meta.json")))
  assert {k: v["num_examples"] for k, v in meta["splits"].items()} == {"train": 512,
                                                                      "test": 128}
  assert meta["captioner"] == "test_captions:IndexCaptioner"

  ratio = 0.3
  spec = datasets.get_dataset(_captions_cfg(fake_fmnist_dir, data_dir, out, ratio))
  ex = spec.source("train")[5]
  assert ex["caption_detailed"] == f"detailed 5 sum {int(ex['image'].sum())}"
  assert ex["caption_short"] == C.short_caption(ex["label"])

  def batches(n):
    ds = pipeline.train_dataset(spec, split="train", pp=f"choose_caption({ratio})|keep("
                                "'label', 'caption')", batch_size=64, seed=3)
    it = iter(ds)
    return it, [next(it) for _ in range(n)]

  _, got = batches(16)  # two epochs: every image twice
  caps = np.concatenate([b["caption"] for b in got])
  labels = np.concatenate([b["label"] for b in got])
  detailed = np.char.startswith(caps.astype(str), "detailed ")
  tol = 4 * np.sqrt(ratio * (1 - ratio) / len(caps))
  assert abs(detailed.mean() - ratio) <= tol, detailed.mean()
  assert all(c == C.short_caption(l) for c, l in zip(caps[~detailed], labels[~detailed]))
  # Deterministic for the pipeline seed, and resumable from the iterator state.
  it, again = batches(3)
  assert all(np.array_equal(a["caption"], b["caption"]) for a, b in zip(again, got[:3]))
  state = it.get_state()
  nxt = next(it)
  it2 = iter(pipeline.train_dataset(spec, split="train", pp=f"choose_caption({ratio})|keep("
                                    "'label', 'caption')", batch_size=64, seed=3))
  it2.set_state(state)
  assert np.array_equal(next(it2)["caption"], nxt["caption"])

  # Captions of another length beside the dataset are refused when the split is read.
  C.write_captions(out, "test", ["x"] * 5, captioner="t", seed=0,
                   dataset="fashion_mnist_captions")
  spec = datasets.get_dataset(_captions_cfg(fake_fmnist_dir, data_dir, out, ratio))
  with pytest.raises(DataError, match=f"{out}/test.jsonl holds 5 captions but split 'test' "
                                      "has 128.*jaxgen recaption"):
    spec.source("test")


def test_recaption_cli_builtin_captioner(fake_fmnist_dir, data_dir, tmp_path, capsys,
                                         monkeypatch):
  # The built-in captioner takes jaxgen's cached classifier (eval.classifier.load_or_train,
  # tested with evaluation); a stand-in here keeps the test fast.
  asked = []

  def classify(images):
    return (images.reshape(len(images), -1).sum(1) % 10).astype(int)

  def stand_in(spec, classifier_dir):
    asked.append((spec.name, classifier_dir))
    return classify

  monkeypatch.setattr(clf_lib, "load_or_train", stand_in)
  out = str(tmp_path / "caps")
  args = ["recaption", "--out", out, "--data-dir", data_dir, "--source-dir", fake_fmnist_dir,
          "--classifier-dir", "CLF", "--splits", "test", "--batch", "50", "--seed", "4"]
  assert cli.main(args) == 0
  assert asked == [("fashion_mnist", "CLF")]
  printed = capsys.readouterr().out
  first = C.read_captions(out, "test", 128)
  meta = C.read_meta(out)
  assert first[0] in printed and "(a " in printed
  assert meta["captioner"] == C.FashionMnistCaptioner.name and meta["seed"] == 4
  assert meta["dataset"] == "fashion_mnist_captions"
  # The files hold what the captioner gives each dataset index, in any batching.
  spec = datasets.get_dataset(ml_collections.ConfigDict(dict(
      name="fashion_mnist", source_dir=fake_fmnist_dir, data_dir=data_dir)))
  images, _ = datasets.load_arrays(spec, "test")
  assert first == C.FashionMnistCaptioner(classify, seed=4)(images, np.arange(128))
  assert cli.main(["recaption", "--out", out, "--captioner", "nocolon"]) == 2
  assert "module:attr" in capsys.readouterr().err


def test_load_captioner():
  assert isinstance(C.load_captioner("test_captions:IndexCaptioner"), IndexCaptioner)
  assert C.load_captioner("test_captions:function_captioner") is function_captioner
  for bad, msg in (("nocolon", "module:attr"), ("no_such_module_xyz:f", "cannot import"),
                   ("test_captions:missing", "has no 'missing'"),
                   ("test_captions:LEVELS", "not a callable")):
    with pytest.raises(ValueError, match=msg):
      C.load_captioner(bad)


def test_prompts_are_held_out_and_prompt_following_measures_them():
  prompts, targets = C.make_prompts(200, seed=0)
  again, targets2 = C.make_prompts(200, seed=0)
  assert prompts == again and all(np.array_equal(targets[k], targets2[k]) for k in targets)
  assert C.make_prompts(200, seed=1)[0] != prompts
  assert np.bincount(targets["label"], minlength=10).tolist() == [20] * 10
  assert set(targets) == {"label", *C.CAPTIONED_ATTRIBUTES}
  # No prompt asks for a combination rarer than 5% in the train split (no large sandal).
  assert not np.any((targets["label"] == 5) & (targets["size"] == 2))
  # Held-out sentence forms: training captions never use their frames.
  frames = ("an image showing", "there is", "pictured on its own")
  assert all(any(f in p.lower() for f in frames) for p in prompts)
  images, labels = synthetic_fmnist(300, 5)
  train_caps = C.FashionMnistCaptioner(seed=0)(images[..., None], np.arange(300), labels=labels)
  assert not any(f in c.lower() for c in train_caps for f in frames)

  images = _images_for(targets)
  perfect = C.prompt_following(images, targets, lambda x: targets["label"])
  assert perfect == {"num": 200.0, "class_accuracy": 1.0, "brightness_accuracy": 1.0,
                     "size_accuracy": 1.0, "texture_accuracy": 1.0,
                     "attributes_accuracy": 1.0, "joint_accuracy": 1.0}
  shuffled = {k: np.roll(v, 1) for k, v in targets.items()}
  worse = C.prompt_following(images, shuffled, lambda x: targets["label"])
  assert worse["class_accuracy"] < 0.5 and worse["attributes_accuracy"] < 0.5
