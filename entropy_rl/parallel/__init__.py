"""Device mesh, logical-axis sharding rules, multi-host start-up, XLA compiler options."""

from entropy_rl.parallel.mesh import MESH_AXES, MeshConfig, initialize_distributed, make_mesh
from entropy_rl.parallel.xla import CPU_COMPILER_OPTIONS, ROLLOUT_COMPILER_OPTIONS, compiler_options, mesh_compiler_options
from entropy_rl.parallel.sharding import (LOGICAL_AXIS_RULES, SAMPLING_AXIS_RULES, MeshBound, batch_sharding, constrain,
                                          logical_to_mesh, shard_model, state_shardings, variable_sharding)

__all__ = ["CPU_COMPILER_OPTIONS", "LOGICAL_AXIS_RULES", "MESH_AXES", "MeshBound", "MeshConfig", "ROLLOUT_COMPILER_OPTIONS",
           "SAMPLING_AXIS_RULES", "batch_sharding", "compiler_options", "constrain", "initialize_distributed", "logical_to_mesh",
           "make_mesh", "mesh_compiler_options", "shard_model",
           "state_shardings", "variable_sharding"]
