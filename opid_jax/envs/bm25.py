"""bm25s, imported so that it never starts JAX: env workers and the retrieval server must not claim accelerator
memory. bm25s's top-k selection imports `jax.lax` when it can and runs it at import time; with JAX hidden during
its import it selects with numpy."""

from __future__ import annotations

import importlib
import sys


def import_bm25s():
  if "bm25s" in sys.modules:
    return sys.modules["bm25s"]
  hidden = {name: sys.modules.get(name) for name in ("jax", "jax.lax")}
  try:
    for name in hidden:
      sys.modules[name] = None  # makes `import jax.lax` raise ImportError inside bm25s
    return importlib.import_module("bm25s")
  finally:
    for name, module in hidden.items():
      if module is None:
        sys.modules.pop(name, None)
      else:
        sys.modules[name] = module
