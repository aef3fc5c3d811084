"""The `jaxgen` command end to end on a tiny model: train, sample (.npz in jaxgen's and
the ADM evaluator's layout, PNG, same seed = same samples), eval, info; and the errors
users see."""

import json
import os

import numpy as np
import pytest

from jaxgen import cli
from jaxgen import config as config_lib
from jaxgen.data import datasets
from jaxgen.eval import evaluate

from helpers import ROOT, write_tiny_config_file


@pytest.fixture(scope="module")
def tiny_config_file(tmp_path_factory, fake_fmnist_dir, data_dir):
  return write_tiny_config_file(str(tmp_path_factory.mktemp("cfg")), fake_fmnist_dir,
                                data_dir)


def test_train_resume_sample_eval(tiny_config_file, tmp_path, capsys):
  wd = str(tmp_path / "run")
  assert cli.main(["train", "--config", tiny_config_file, "--workdir", wd,
                   "--config.train.num_steps=2"]) == 0
  # Resumes with the stored config (no --config) and a larger num_steps.
  assert cli.main(["train", "--workdir", wd, "--config.train.num_steps=4"]) == 0
  assert sorted(os.listdir(os.path.join(wd, "checkpoints")))[-1] == "4"
  out1 = str(tmp_path / "a.npz")
  args = ["sample", "--workdir", wd, "--num", "12", "--seed", "3", "--steps", "2",
          "--cfg-scale", "2.0", "--batch-size", "8"]
  assert cli.main(args + ["--out", out1]) == 0
  with np.load(out1) as f:
    arr, labels = f["arr_0"], f["labels"]
  assert arr.dtype == np.uint8 and arr.shape == (12, 32, 32, 1)
  np.testing.assert_array_equal(labels, np.arange(12) % 10)
  assert os.path.isfile(str(tmp_path / "a.png"))
  capsys.readouterr()
  assert cli.main(args + ["--label", "11", "--out", str(tmp_path / "c.npz")]) == 2  # 10 + null
  assert "--label 11: this run has classes 0..9" in capsys.readouterr().err
  # Same seed, same samples, with any option of the paradigm by name (typed from the
  # string) in place of the short flags (one call checks both: a misread option changes
  # every pixel, so the 28x28 crop's equality below catches it), here written with
  # --format adm: as the ADM evaluator reads them (native 28x28: the padding cropped;
  # RGB), and as `jaxgen eval` then scores them (grey again, exactly the cropped samples).
  out2 = str(tmp_path / "b.npz")
  named = args[:6] + ["3", "--sample.steps=2", "--sample.cfg_scale", "2.0", "--batch-size", "8"]
  assert cli.main(named + ["--out", out2, "--format", "adm"]) == 0
  bar = capsys.readouterr().err  # the bar ticks per sampler step: 2 calls x 2 steps
  assert "4/4" in bar and "8/12 images" in bar and "12/12 images" in bar, bar
  assert "step/s" in bar or "s/step" in bar, bar
  _assert_adm_evaluator_reads(out2, n=12, size=28)
  adm, adm_labels = evaluate.load_samples(out2)
  np.testing.assert_array_equal(adm, np.repeat(arr[:, 2:30, 2:30], 3, axis=-1))
  spec = datasets.describe(config_lib.load_config_file(tiny_config_file).data)
  grey, adm_labels = evaluate.check_samples(adm, adm_labels, spec, out2, log=lambda *_: 0)
  np.testing.assert_array_equal(grey, arr[:, 2:30, 2:30])
  np.testing.assert_array_equal(adm_labels, labels)
  # An option that flow does not have: the error lists flow's options.
  assert cli.main(named + ["--sample.top_k=3"]) == 2
  assert ("the 'flow' paradigm has no sampling option 'top_k'; its options are micro_batch, "
          "cfg_scale, steps, solver, shift") in capsys.readouterr().err
  assert cli.main(named + ["--steps", "3"]) == 2
  assert "--steps and --sample.steps both given" in capsys.readouterr().err
  assert cli.main(["eval", "--workdir", wd, "--samples", out1]) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert set(result["samples"]) == {"fd", "num", "accuracy"}
  assert result["real_test"]["num"] == 12


def _assert_adm_evaluator_reads(path, n, size):
  """Reads ``arr_0`` as guided-diffusion's evaluations/evaluator.py does: the
  ``arr_0.npy`` member of the zip, a version 1 or 2 .npy header (else it falls back to
  loading it whole), C order, then batches fed to a [None, None, None, 3] input."""
  import zipfile  # pylint: disable=g-import-not-at-top
  with zipfile.ZipFile(path) as z, z.open("arr_0.npy") as f:
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}[np.lib.format.read_magic(f)]
    shape, fortran, dtype = read_header(f)
  assert shape == (n, size, size, 3) and dtype == np.uint8 and not fortran


def test_info_prints_parameters_and_gflops(capsys):
  cfg = os.path.join(ROOT, "configs", "imagenet256_dit_xl2.py:objective=ddpm")
  assert cli.main(["info", "--config", cfg]) == 0  # the paper's DDPM recipe: learn_sigma
  out = capsys.readouterr().out
  assert "675.13M as the paper counts" in out
  gflops = float(out.split("forward")[1].split("GFLOPs")[0])
  assert abs(gflops / 118.64 - 1) < 0.05


def test_errors_are_messages_not_tracebacks(tiny_config_file, tmp_path, capsys):
  assert cli.main(["train", "--config", tiny_config_file, "--workdir", str(tmp_path),
                   "--config.train.num_step=3"]) == 2
  assert "Did you mean num_steps" in capsys.readouterr().err
  assert cli.main(["sample", "--workdir", str(tmp_path / "nothing")]) == 2
  assert "holds no config.json" in capsys.readouterr().err
  assert cli.main(["train", "--workdir", str(tmp_path / "new")]) == 2
  assert "pass --config" in capsys.readouterr().err
  # Bad sampling arguments stop before anything is loaded (no workdir needed).
  (tmp_path / "a_file").write_text("")
  for bad, says in ((["--num", "0"], "--num 0: must be at least 1"),
                    (["--steps", "0"], "--steps 0: must be at least 1"),
                    (["--batch-size", "-2"], "--batch-size -2: must be at least 1"),
                    (["--out", str(tmp_path / "a_file" / "s.npz")], "cannot create")):
    assert cli.main(["sample", "--workdir", str(tmp_path / "nothing")] + bad) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxgen: error:") and says in err, err
