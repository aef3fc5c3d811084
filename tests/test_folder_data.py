"""Image folders as datasets (`jaxgen.data.folder`): class subfolders and flat folders,
pixels, the hash split, unreadable images, the cache, captions, ``jaxgen data
--from-folder`` and two training steps of a tiny config on a folder."""

import contextlib
import io
import json
import os
import shutil

import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxgen import cli
from jaxgen import config as config_lib
from jaxgen.data import datasets, folder
from jaxgen.errors import DataError

from helpers import tiny_config

# Class -> dominant channel of its images, so that a label can be checked on the pixels.
CLASSES = {"bird": 2, "cat": 0, "dog": 1}


def _image(rng, size, channel, mode="RGB"):
  arr = rng.integers(0, 60, size[::-1] + (3,)).astype(np.uint8)
  arr[..., channel] = 200
  im = Image.fromarray(arr)
  return im.convert(mode) if mode != "RGB" else im


def _save(im, path, fmt):
  buf = io.BytesIO()
  im.save(buf, fmt)
  with open(path, "wb") as f:
    f.write(buf.getvalue())
  return buf.getvalue()


def write_folder(root):
  """31 readable images in 3 class folders (PNG, JPEG, BMP; 12 to 40 px, portrait and
  landscape; one RGBA with a transparent half, one greyscale, two in nested folders), a
  file of garbage named .png and a truncated JPEG (unreadable), and files that are no
  images."""
  rng = np.random.default_rng(0)
  for name, ch in CLASSES.items():
    os.makedirs(os.path.join(root, name, "more"))
    for i in range(10):
      size = (12 + 3 * i, 40 - 2 * i)  # landscape and portrait
      fmt, ext = [("PNG", "png"), ("JPEG", "jpg"), ("BMP", "bmp")][i % 3]
      sub = "more/" if i == 9 else ""
      if not (name == "bird" and i == 9):
        _save(_image(rng, size, ch), os.path.join(root, name, f"{sub}{i}.{ext}"), fmt)
  rgba = _image(rng, (20, 20), CLASSES["bird"], "RGBA")
  alpha = np.full((20, 20), 255, np.uint8)
  alpha[:, :10] = 0
  rgba.putalpha(Image.fromarray(alpha))
  _save(rgba, os.path.join(root, "bird", "rgba.png"), "PNG")
  _save(_image(rng, (16, 16), 0, "L"), os.path.join(root, "cat", "grey.png"), "PNG")
  with open(os.path.join(root, "dog", "broken.png"), "wb") as f:
    f.write(b"this is not an image")
  jpeg = _save(_image(rng, (30, 30), 1), os.path.join(root, "dog", "cut.jpg"), "JPEG")
  with open(os.path.join(root, "dog", "cut.jpg"), "wb") as f:
    f.write(jpeg[:len(jpeg) // 2])
  for junk in ("notes.txt", "cat/.DS_Store", "bird/labels.csv"):
    with open(os.path.join(root, junk), "w") as f:
      f.write("x")
  return str(root)


def _cfg(source_dir, data_dir, **kw):
  c = dict(name="folder", source_dir=source_dir, data_dir=data_dir, image_size=16,
           crop="center", grey=False, test_fraction=0.25, captions_file="", pp="")
  return ml_collections.ConfigDict({**c, **kw})


def _paths(spec, split):
  base = spec.source(split)._base  # the prepared records, with their relative paths
  return sorted(base[i]["path"].decode() for i in range(len(base)))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
  return write_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def prepared(image_folder, tmp_path_factory):
  """The folder prepared at 16x16 RGB, and what the preparation printed on stderr."""
  data_dir = str(tmp_path_factory.mktemp("folder_tfds"))
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    spec = datasets.get_dataset(_cfg(image_folder, data_dir))
  return spec, data_dir, err.getvalue()


def test_class_folders_become_labelled_fixed_size_rgb(prepared, image_folder):
  spec, _, _ = prepared
  assert spec.class_names == ("bird", "cat", "dog") and spec.num_classes == 3
  assert spec.image_shape == (16, 16, 3) and not spec.has_captions
  assert sum(spec.splits.values()) == 31 and set(spec.splits) == {"train", "test"}
  for split in spec.splits:
    images, labels = datasets.load_arrays(spec, split)
    assert images.shape == (spec.splits[split], 16, 16, 3) and images.dtype == np.uint8
    assert set(spec.source(split)[0]) == {"image", "label"}  # the path is not batched
    base = spec.source(split)._base
    for i, (image, label) in enumerate(zip(images, labels)):
      rel = base[i]["path"].decode()
      assert spec.class_names[label] == rel.split("/")[0]
      if rel == "bird/rgba.png":  # transparent half over white, opaque half blue
        assert image[:, :6].min() == 255 and image[:, 10:, 2].mean() > 180
      elif rel != "cat/grey.png":
        assert image.mean((0, 1)).argmax() == CLASSES[spec.class_names[label]], rel
  assert "cat/more/9.png" in _paths(spec, "train") + _paths(spec, "test")


def test_describe_matches_without_reading(prepared, image_folder):
  spec, data_dir, _ = prepared
  described = datasets.describe(_cfg(image_folder, data_dir))
  assert not datasets.has_data(described)
  assert (described.name, described.image_shape, described.class_names) == (
      spec.name, spec.image_shape, spec.class_names)


def test_unreadable_images_are_skipped_and_listed(prepared):
  _, _, err = prepared
  lines = [l for l in err.splitlines() if l.startswith("jaxgen: warning:")]
  assert len(lines) == 1, err
  assert "2 of 33 images" in lines[0]
  assert "dog/broken.png (UnidentifiedImageError" in lines[0]
  assert "dog/cut.jpg (OSError: " in lines[0]


def test_split_is_a_deterministic_hash_of_the_path(prepared, image_folder, tmp_path):
  spec, data_dir, _ = prepared
  for split in ("train", "test"):
    assert all(folder.split_of(p, 0.25) == split for p in _paths(spec, split))
  before = {s: _paths(spec, s) for s in spec.splits}
  # Same folder, same options: the cached copy is read, nothing is prepared again.
  cache = os.path.join(data_dir, "jaxgen_folder")
  assert len(os.listdir(cache)) == 1
  assert datasets.get_dataset(_cfg(image_folder, data_dir)).name == spec.name
  assert len(os.listdir(cache)) == 1
  # A copy with two more images: a new cache (no stale reuse), the others keep their split.
  grown = str(tmp_path / "grown")
  shutil.copytree(image_folder, grown)
  rng = np.random.default_rng(1)
  for i in range(2):
    _save(_image(rng, (20, 20), 0), os.path.join(grown, "cat", f"new{i}.png"), "PNG")
  spec2 = datasets.get_dataset(_cfg(grown, data_dir))
  assert spec2.name != spec.name and len(os.listdir(cache)) == 2
  for s in spec.splits:
    assert set(before[s]) <= set(_paths(spec2, s))
  assert sum(spec2.splits.values()) == sum(spec.splits.values()) + 2


def test_flat_folder_grey_and_stretch(tmp_path, capsys):
  src = tmp_path / "flat"
  src.mkdir()
  rng = np.random.default_rng(2)
  for i in range(6):
    _save(_image(rng, (10 + 4 * i, 12), 1), str(src / f"{i}.png"), "PNG")
  spec = datasets.get_dataset(_cfg(str(src), str(tmp_path / "tfds"), image_size=8,
                                   grey=True, crop="none", test_fraction=0.0))
  assert spec.class_names == ("image",) and spec.num_classes == 1
  assert spec.splits == {"train": 6} and spec.image_shape == (8, 8, 1)
  images, labels = datasets.load_arrays(spec, "train")
  assert images.shape == (6, 8, 8, 1) and (labels == 0).all()
  assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("layout, match", [
    ("broken", r"No image of .* is readable.*a\.png \(UnidentifiedImageError"),
    ("mixed", r"holds both images \(1, e\.g\. loose\.png\) and class subfolders \(a\)"),
    ("empty", r"holds no images"),
    ("missing", r"is not a directory"),
])
def test_folders_that_cannot_work_are_one_error_line(tmp_path, capsys, layout, match):
  src = tmp_path / "src"
  if layout != "missing":
    (src / "a").mkdir(parents=True)
  if layout == "broken":
    (src / "a" / "a.png").write_bytes(b"garbage")
  if layout == "mixed":
    _save(_image(np.random.default_rng(0), (8, 8), 0), str(src / "a" / "x.png"), "PNG")
    _save(_image(np.random.default_rng(0), (8, 8), 0), str(src / "loose.png"), "PNG")
  with pytest.raises(DataError, match=match):
    datasets.get_dataset(_cfg(str(src), str(tmp_path / "tfds")))
  assert cli.main(["data", "--from-folder", str(src), "--out", str(tmp_path / "tfds")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("jaxgen: error:"), err


def test_cli_prepares_and_prints_the_overrides_that_train_on_it(prepared, image_folder,
                                                                 capsys):
  spec, data_dir, _ = prepared
  assert cli.main(["data", "--from-folder", image_folder, "--out", data_dir,
                   "--image-size", "16", "--test-fraction", "0.25"]) == 0
  out = capsys.readouterr().out
  assert f"{spec.name}: splits" in out and "Classes: bird, cat, dog." in out
  flags = out.strip().splitlines()[-1].split()
  config = config_lib.apply_overrides(tiny_config("", ""),
                                      config_lib.split_overrides(flags)[1])
  assert datasets.describe(config.data).name == spec.name  # the same cached copy


@pytest.mark.parametrize("fmt", ["jsonl", "tsv"])
def test_captions_file_joins_captions_by_path(prepared, image_folder, tmp_path, fmt):
  spec, data_dir, _ = prepared
  paths = _paths(spec, "train")
  captioned = {p: f"caption of {p}" for p in paths[:5]}
  path = tmp_path / f"captions.{fmt}"
  with open(path, "w") as f:
    for p, c in captioned.items():
      f.write(json.dumps({"path": p, "caption": c}) + "\n" if fmt == "jsonl" else
              f"./{p}\t{c}\n")
  cfg = _cfg(image_folder, data_dir, captions_file=str(path), detailed_ratio=1.0,
             pp="choose_caption(1)|scale(-1, 1)|drop('caption')")
  cspec = datasets.get_dataset(cfg)
  assert cspec.has_captions and cspec.name == spec.name  # no new preparation
  src = cspec.source("train")
  for i in range(len(src)):
    ex, rel = src[i], src._base[i]["path"].decode()
    assert ex["caption_short"] == f"a {rel.split('/')[0]}"
    assert ex["caption_detailed"] == captioned.get(rel, ex["caption_short"])
  with open(path, "a") as f:
    f.write("no tab here\n")
  with pytest.raises(DataError, match="line 6 is neither"):
    datasets.get_dataset(cfg)
  with pytest.raises(DataError, match="keeps no caption"):
    datasets.get_dataset(_cfg(image_folder, data_dir, captions_file=str(path)))


def _folder_config(image_folder, data_dir, **train):
  c = tiny_config(image_folder, data_dir, **train)
  c.data.update(name="folder", image_size=16, test_fraction=0.25, pp="scale(-1, 1)|flip_lr")
  return c


def test_a_config_builds_its_batches_from_a_folder(prepared, image_folder, one_device):
  """The paradigm sizes itself from the folder (16x16 RGB, its classes) and the train
  pipeline delivers batches of that shape (the cheap check; training: slow tier)."""
  from jaxgen.train import loop
  _, data_dir, _ = prepared
  exp = loop.build(_folder_config(image_folder, data_dir), one_device)
  assert exp.paradigm.image_shape == (16, 16, 3)
  batch = next(loop.make_data_iterator(exp))
  assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.float32
  assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  assert set(np.unique(batch["label"])) <= set(range(exp.paradigm.num_classes))


@pytest.mark.slow
def test_any_config_trains_on_a_folder(prepared, image_folder, tmp_path, one_device):
  from jaxgen.train import loop
  _, data_dir, _ = prepared
  c = _folder_config(image_folder, data_dir, num_steps=2, log_every=1, ckpt_every=2)
  loop.train(c, str(tmp_path / "run"), one_device, progress=False)
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    rows = [json.loads(l) for l in f]
  assert [r["step"] for r in rows if "loss" in r] == [1, 2]
  assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)


def test_a_folder_run_samples_where_the_folder_is_not(prepared, image_folder, tmp_path,
                                                      one_device):
  """A run records its dataset's description (``dataset.json``, as training writes it);
  `load_run(data=False)` builds from it, so the run loads without the folder."""
  import jax
  from jaxgen import generate
  from jaxgen.train import checkpoint, loop
  _, data_dir, _ = prepared
  src = str(tmp_path / "images")
  shutil.copytree(image_folder, src)
  config = _folder_config(src, data_dir)
  exp = loop.build(config, one_device)
  wd = str(tmp_path / "run")
  state = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), exp.abstract_state)
  ckpt = checkpoint.Checkpointer(wd, async_save=False)
  ckpt.save(1, state, config=config, force=True)
  ckpt.close()
  checkpoint.write_config(wd, config)
  with open(os.path.join(wd, datasets.SPEC_FILE), "w") as f:
    json.dump(datasets.spec_to_dict(exp.dataset), f)
  shutil.rmtree(src)  # the folder is gone
  with pytest.raises(DataError):
    datasets.describe(config.data)  # describing the folder would need it
  again, _, step = generate.load_run(wd, devices=one_device, data=False)
  assert step == 1 and again.paradigm.image_shape == (16, 16, 3)
  assert again.dataset.class_names == exp.dataset.class_names
