"""Launch tools: ahead-of-time compilation of a config's sharded step for a mesh of
fake devices (no data needed), and the shell launchers' syntax."""

import os
import subprocess
import sys

from helpers import ROOT, subprocess_env


def test_aot_compile_for_a_2x4_mesh_reports_memory():
  env = subprocess_env(JAX_PLATFORMS="cpu")
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "aot_compile.py"), "--config",
       os.path.join(ROOT, "configs", "quickstart.py"), "--topology", "cpu:8",
       "--config.mesh.data=2", "--config.mesh.fsdp=4", "--config.model.variant=tiny"],
      capture_output=True, text=True, env=env, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "for 8 x cpu, mesh {'data': 2, 'fsdp': 4, 'context': 1, 'tensor': 1}" in out.stdout
  assert "per-device memory" in out.stdout


def test_shell_launchers_parse():
  for name in ("setup.sh", "quickstart.sh", "tpu_pod.sh", "slurm.sbatch"):
    subprocess.run(["bash", "-n", os.path.join(ROOT, "launch", name)], check=True)
  subprocess.run(["bash", "-n", os.path.join(ROOT, ".ci", "run")], check=True)
