"""jax.jit with XLA's CPU backend optimisation off: compiling, not running, dominates the
loss tests, and level 0 compiles several times faster with the same numerics contract."""

import functools

import jax

fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
