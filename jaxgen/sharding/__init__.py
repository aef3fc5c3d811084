"""Mesh, logical-axis rules, shardings of states and batches, and multi-host set-up."""

from jaxgen.sharding.mesh import (LOGICAL_RULES, batch_sharding, global_batch, make_mesh,
                                  replicated, tree_shardings)
from jaxgen.sharding.distributed import maybe_initialize_distributed
