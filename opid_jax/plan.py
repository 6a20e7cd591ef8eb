"""Memory planner: per-device bytes of a run from shapes and shardings alone (no weights, no accelerator).

  python -m opid_jax.plan --config=configs/alfworld.py --config.model.path=DIR_WITH_CONFIG_JSON \
      [--mesh=data=2,fsdp=4,tensor=1] [--device=v5e|v4|v5p|h100|h200] [--num_devices=N]

Prints params, gradients, AdamW state, reference params, the rollout KV cache and an activation estimate for
one update micro-batch under the given mesh (default: the config's), then a mesh and micro-batch that fit. The
estimate follows model.attention (`auto`: the device's fused kernel) and train.packing (micro-batches of
ppo.micro_batch_tokens tokens in rows of train.pack_length, 0: the trainer's power-of-two default).
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from opid_jax.cli import define_config_flag, parse_flags_or_exit, required_config
from opid_jax.errors import UserError, exit_on_user_error

_CONFIG = define_config_flag()
flags.DEFINE_string("mesh", None, "data=D,fsdp=F,tensor=T (missing axes are 1); default: the config's mesh.")
flags.DEFINE_string("device", "h100", "Device kind: v5e, v4, v5p, h100 or h200.")
flags.DEFINE_integer("num_devices", None, "Devices in the job (default: the mesh's product, or 8).")
FLAGS = flags.FLAGS


def parse_mesh(text: str) -> dict[str, int]:
  from opid_jax.parallel.mesh import MESH_AXES

  sizes = {a: 1 for a in MESH_AXES}
  for part in filter(None, text.split(",")):
    name, _, value = part.partition("=")
    if name not in sizes or not value.lstrip("-").isdigit():
      raise UserError(f"--mesh: {part!r} is not one of {', '.join(a + '=N' for a in MESH_AXES)}")
    sizes[name] = int(value)
  return sizes


def read_model_config(path: str, model):
  from opid_jax.model.config import ModelConfig

  file = path if path.endswith(".json") else os.path.join(path, "config.json")
  if not os.path.isfile(file):
    raise UserError(f"the planner reads shapes from a config.json; none at {file}")
  with open(file) as f:
    hf = json.load(f)
  return ModelConfig.from_hf_dict(hf, dtype=model.dtype, param_dtype=model.param_dtype, remat=model.remat)


def gib(n: int) -> str:
  return f"{n / 1024**3:8.2f} GiB"


def report(config, mesh_text: str | None, device: str, num_devices: int | None) -> str:
  from opid_jax.batching import packing as packing_lib
  from opid_jax.parallel import memory, mesh as mesh_lib

  if device not in memory.DEVICES:
    raise UserError(f"--device={device!r} is not one of {', '.join(memory.DEVICES)}")
  cfg = read_model_config(config.model.path, config.model)
  rules = tuple((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in config.mesh.rules)
  sizes = (
    parse_mesh(mesh_text)
    if mesh_text
    else dict(data=config.mesh.data, fsdp=config.mesh.fsdp, tensor=config.mesh.tensor)
  )
  fixed = [s for s in sizes.values() if s != -1]
  if num_devices is None:
    num_devices = 8 if -1 in sizes.values() else int(memory.np.prod(fixed))
  sizes = dict(zip(mesh_lib.MESH_AXES, mesh_lib.mesh_shape(sizes, num_devices)))
  r = config.rollout
  work = memory.Workload(
    rollout_batch=r.tasks_per_batch * r.group_size,
    max_length=r.max_prompt_tokens + r.max_new_tokens,
    micro_batch=config.ppo.micro_batch_size,
    with_reference=config.ppo.kl_coef > 0,
    remat=config.model.remat,
    packing=bool(config.train.packing),
    pack_length=config.train.pack_length or packing_lib.row_length_for(r.max_prompt_tokens + r.max_new_tokens),
    micro_batch_tokens=config.ppo.micro_batch_tokens,
    attention=memory.planned_attention(config.model.attention, device),
  )
  budget = memory.DEVICES[device]
  chosen = memory.plan(cfg, work, sizes, rules)
  mesh_name = ",".join(f"{k}={v}" for k, v in sizes.items())
  attention = config.model.attention
  if work.attention != attention:
    attention += f" (planned as {work.attention} on {device})"
  packing = "off"
  if work.packing:
    packing = f"on ({work.micro_batch_tokens} tokens per update micro-batch, rows of {work.pack_length})"
  lines = [
    f"model {config.model.path}: {cfg.model_type}, {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
    f"params {cfg.param_dtype}, compute {cfg.dtype}, remat {cfg.remat}",
    f"workload: rollout batch {work.rollout_batch} x {work.max_length} tokens, update micro-batch "
    f"{work.update_rows} x {work.update_length} tokens, reference {'yes' if work.with_reference else 'no'}",
    f"attention {attention}, packing {packing}",
    f"per device on mesh {mesh_name} ({device}: {gib(budget).strip()}, plan to {memory.USABLE:.0%}):",
  ]
  lines += [f"  {name:<28}{gib(value)}" for name, value in chosen.rows()]
  verdict = "fits" if chosen.total <= budget * memory.USABLE else "does NOT fit"
  lines.append(f"  -> {verdict}")
  best = memory.suggest(cfg, work, num_devices, budget, rules, config.ppo.mini_batch_size)
  if best is None:
    lines.append(f"suggestion: nothing fits on {num_devices} x {device}; use more devices or a larger device")
  else:
    plan, micro = best
    name = ",".join(f"{k}={v}" for k, v in plan.mesh.items())
    dp = plan.mesh["data"] * plan.mesh["fsdp"]
    score_micro = -(-config.train.score_micro_batch // dp) * dp  # scoring batches split over the same devices
    micro_flag = (
      f"--config.ppo.micro_batch_tokens={work.micro_batch_tokens}"
      if work.packing
      else f"--config.ppo.micro_batch_size={micro}"
    )
    lines.append(
      f"suggestion for {num_devices} x {device}: --config.mesh.data={plan.mesh['data']} "
      f"--config.mesh.fsdp={plan.mesh['fsdp']} --config.mesh.tensor={plan.mesh['tensor']} "
      f"{micro_flag} --config.train.score_micro_batch={score_micro}  "
      f"({name}: {gib(plan.total).strip()} per device)"
    )
  return "\n".join(lines)


@exit_on_user_error
def main(argv):
  del argv
  config = required_config(_CONFIG, "configs/alfworld.py")
  print(report(config, FLAGS.mesh, FLAGS.device, FLAGS.num_devices))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags_or_exit)
