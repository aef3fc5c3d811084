"""Ahead-of-time compile a config's train step for a target mesh it does not have.

Lowers and compiles the sharded step with abstract inputs only, so sharding errors,
compile errors and per-device memory show up before anyone rents the hardware.

  # 8 fake CPU devices, e.g. a 2x4 data x fsdp mesh:
  python launch/aot_compile.py --config configs/quickstart.py --topology cpu:8 \
      --config.mesh.data=2 --config.mesh.fsdp=4
  # A TPU slice (needs libtpu installed; no TPU needed):
  python launch/aot_compile.py --config configs/imagenet256_dit_xl2.py --topology tpu:v5e-16
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True)
  p.add_argument("--topology", default="cpu:8",
                 help="cpu:N (N fake CPU devices) or tpu:NAME (e.g. tpu:v5e-16)")
  args, rest = p.parse_known_args(argv)
  kind, _, name = args.topology.partition(":")

  import jax  # pylint: disable=g-import-not-at-top
  if kind == "cpu":
    jax.config.update("jax_num_cpu_devices", int(name or 8))
    devices = jax.devices()
  elif kind == "tpu":
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    devices = topologies.get_topology_desc(platform="tpu", topology_name=name).devices
  else:
    raise SystemExit(f"--topology must be cpu:N or tpu:NAME, got {args.topology!r}")

  from jaxgen import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxgen.sharding import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from jaxgen.train import loop  # pylint: disable=g-import-not-at-top
  _, overrides = config_lib.split_overrides(rest)
  config = config_lib.apply_overrides(config_lib.load_config_file(args.config), overrides)
  exp = loop.build_abstract(config, devices)
  _, jitted = loop.make_train_step(exp)
  batch = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                     sharding=mesh_lib.batch_sharding(exp.mesh, len(a.shape))),
      exp.paradigm.example_batch(config.train.batch_size))
  with mesh_lib.activate(exp.mesh):
    compiled = jitted.lower(exp.abstract_state, batch).compile()
  print(f"compiled {config.model.name} {config.model.get('variant', '')} for "
        f"{len(devices)} x {devices[0].device_kind}, mesh {dict(exp.mesh.shape)}")
  mem = compiled.memory_analysis()
  if mem is not None:
    gib = lambda b: b / 2 ** 30
    print(f"per-device memory: arguments {gib(mem.argument_size_in_bytes):.2f} GiB, "
          f"outputs {gib(mem.output_size_in_bytes):.2f} GiB, "
          f"temporaries {gib(mem.temp_size_in_bytes):.2f} GiB")
  return 0


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  sys.exit(main())
