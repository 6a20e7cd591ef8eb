"""opid_jax: On-Policy Skill Distillation for agentic RL, in JAX."""

__version__ = "0.1.0"
