"""Packaging: configs resolve by name, optional extras fail with an install hint, and a
wheel built from the repository runs `jaxgen info --config quickstart` from any
directory."""

import glob
import importlib.util
import os
import re
import shutil
import site
import subprocess
import sys
import venv
import zipfile

import pytest

from jaxgen import config as config_lib
from jaxgen import errors

from helpers import ROOT


def test_configs_resolve_by_name_from_any_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # no configs/ here: names, not paths
  assert config_lib.load_config_file("quickstart").model.name == "unet"
  dit = config_lib.load_config_file("imagenet256_dit_xl2:variant=S/2")
  assert dit.model.name == "dit" and dit.model.variant == "S/2"
  names = config_lib.packaged_config_names()
  assert "quickstart" in names and "common" not in names  # common.py has no get_config
  with pytest.raises(errors.ConfigError, match=r"Did you mean quickstart\?.*Packaged "
                     r"configs: .*imagenet256_dit_xl2"):
    config_lib.load_config_file("quickstrat")
  with pytest.raises(errors.ConfigError, match="ships a config of that name: --config "
                     "quickstart:variant=tiny"):
    config_lib.load_config_file("configs/quickstart.py:variant=tiny")


def test_ci_runs_the_readme_test_command_after_setup():
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  command = re.search(r"Run the tests .*?```bash\n(.*?)\n```", readme, re.S).group(1)
  with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
    lines = [l for l in f.read().splitlines() if l and not l.startswith("#")]
  assert lines[-2:] == ["bash launch/setup.sh", command], (lines, command)


def test_missing_optional_dependency_names_the_extra():
  with pytest.raises(errors.MissingDependencyError, match=re.escape("pip install 'jaxgen[text]'")):
    errors.import_optional("jaxgen_no_such_module", "text")


def _build_wheel(out_dir: str) -> str:
  """Builds jaxgen's wheel from a copy of the repository's files; returns its path."""
  src = os.path.join(out_dir, "src")
  for folder in ("jaxgen", "configs"):
    shutil.copytree(os.path.join(ROOT, folder), os.path.join(src, folder),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  for name in ("setup.py", "README.md", "LICENSE"):
    shutil.copy2(os.path.join(ROOT, name), src)
  # Offline with this environment's setuptools when it can build wheels (the `wheel`
  # package, in jaxgen[dev]); else pip's isolated build fetches them.
  isolation = ["--no-build-isolation"] if importlib.util.find_spec("wheel") else []
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation,
                  "-w", os.path.join(out_dir, "dist"), src], check=True, timeout=300)
  (wheel,) = glob.glob(os.path.join(out_dir, "dist", "jaxgen-*.whl"))
  return wheel


@pytest.mark.slow
def test_wheel_runs_info_by_config_name_outside_the_repo(tmp_path):
  wheel = _build_wheel(str(tmp_path))
  files = zipfile.ZipFile(wheel).namelist()
  assert {"jaxgen/configs/quickstart.py", "jaxgen/configs/common.py"} <= set(files)
  assert any(".dist-info/" in f and f.endswith("/LICENSE") for f in files), files

  # A fresh venv whose dependencies come from this interpreter's site-packages (as
  # --system-site-packages would give when this is the system Python; here it may be
  # .venv), added after the venv's own, so that jaxgen is imported from the wheel only.
  env = str(tmp_path / "venv")
  venv.EnvBuilder(with_pip=False).create(env)
  purelib = os.path.join(env, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}",
                         "site-packages")
  with open(os.path.join(purelib, "outer_site_packages.pth"), "w", encoding="utf-8") as f:
    f.writelines(f"import site; site.addsitedir({d!r})\n" for d in site.getsitepackages())
  python = os.path.join(env, "bin", "python")
  subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                  "--ignore-installed", wheel], check=True, timeout=300)

  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  run_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
  run_env["JAX_PLATFORMS"] = "cpu"
  where = subprocess.run(
      [python, "-c", "import jaxgen.config as c; print(c.__file__); print(c.packaged_config_dir())"],
      cwd=elsewhere, env=run_env, capture_output=True, text=True, check=True).stdout.split()
  assert all(p.startswith(purelib) for p in where), where
  out = subprocess.run([os.path.join(env, "bin", "jaxgen"), "info", "--config", "quickstart"],
                       cwd=elsewhere, env=run_env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert re.search(r"parameters\s+[\d.]+M trainable", out.stdout), out.stdout
