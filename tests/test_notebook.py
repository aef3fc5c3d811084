"""``notebooks/quickstart.ipynb`` runs top to bottom (slow: it trains, samples and
evaluates), on the synthetic Fashion-MNIST and with a few steps set through its
parameters' environment variables."""

import os
import time

import pytest

from helpers import ROOT


@pytest.mark.slow
def test_quickstart_notebook_runs_top_to_bottom(fake_fmnist_dir, data_dir, tmp_path,
                                                monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  workdir = tmp_path / "run"
  for name, value in (("JAXGEN_NOTEBOOK_STEPS", "20"), ("JAXGEN_NOTEBOOK_SAMPLES", "20"),
                      ("JAXGEN_NOTEBOOK_WORKDIR", str(workdir)),
                      ("JAXGEN_FASHION_MNIST_DIR", fake_fmnist_dir),
                      ("JAXGEN_DATA_DIR", data_dir),
                      ("JAXGEN_CLASSIFIER_DIR", str(tmp_path / "classifiers")),
                      ("PYTHONPATH", ROOT)):  # the kernel imports this checkout's jaxgen
    monkeypatch.setenv(name, value)
  nb = nbformat.read(os.path.join(ROOT, "notebooks", "quickstart.ipynb"), as_version=4)
  t0 = time.perf_counter()
  nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  print(f"notebook executed in {time.perf_counter() - t0:.0f} s")
  assert (workdir / "checkpoints" / "20").is_dir()
  assert (workdir / "samples.png").is_file()
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", ()))
  assert "(20, 32, 32, 1) uint8" in text and "accuracy=" in text and "fd=" in text
