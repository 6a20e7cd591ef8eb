"""`algo.name`: the paper's comparison rows and GiGPO, each a switch over the same rollout, scoring and update.

Every row plays, scores and updates through the same code; a row only says which signals it uses (docs/baselines.md):
whether each step's response is scored after its skill-augmented (teacher) prompt, whether the rollout prompts carry
skills from the skill bank (Skill-GRPO), which advantage it builds (GRPO, + OPID's skill term, + GiGPO's step term,
RLSD's reweighting) and which extra loss term the update adds (SDAR's gated distillation, Skill-SD's reverse KL).
The teacher context is always the skill our analyzer produced for that step, routed as OPID routes it, so the rows
differ only in the algorithm.
"""

from __future__ import annotations

import dataclasses

from opid_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Row:
  teacher: bool = False  # scores the sampled response after the step's skill-augmented prompt
  student_skills: bool = False  # rollout prompts carry the skill bank's episode skill (Skill-GRPO)
  opid_term: bool = False  # A += lambda_skill * (l_T - l_old)
  rlsd: bool = False  # A_t = A_seq * ((1 - lam) + lam * clip(exp(sign(A_seq) (l_T - l_S))))
  distill: str = ""  # "sdar" | "skill_sd": an extra loss term in the update
  pg_weight: float = 1.0  # weight of the clipped policy-gradient term
  step_weight: float = 0.0  # GiGPO's step-level term, when algo.step_weight is -1


ROWS = {
  "opid": Row(teacher=True, opid_term=True),
  "grpo": Row(),
  "gigpo": Row(step_weight=1.0),
  "skill_grpo": Row(student_skills=True),
  "sdar": Row(teacher=True, distill="sdar"),
  "opsd": Row(teacher=True, distill="sdar", pg_weight=0.0),
  "grpo_opsd": Row(teacher=True, distill="sdar"),
  "rlsd": Row(teacher=True, rlsd=True),
  "skill_sd": Row(teacher=True, distill="skill_sd"),
}


def row_of(config) -> Row:
  return ROWS[config.algo.name]


def step_weight(config) -> float:
  w = config.algo.step_weight
  return row_of(config).step_weight if w == -1.0 else w


def gate_beta(config) -> float:
  return 0.0 if config.algo.name == "grpo_opsd" else config.algo.sdar_beta


def distill_coef(config) -> float:
  row = row_of(config)
  return {"sdar": config.algo.sdar_coef, "skill_sd": config.algo.skill_sd_coef}.get(row.distill, 0.0)


def lambda_skill(config) -> float:
  """OPID's skill term: the `opid` row's lambda; the rows without it use none."""
  return config.opid.lambda_skill if row_of(config).opid_term else 0.0


def needs_analyzer(config) -> bool:
  """Whether the run uses skills at all: a teacher pass (OPID with lambda > 0, the distillation and RLSD rows) or
  Skill-GRPO's bank. GRPO and GiGPO do not."""
  row = row_of(config)
  teacher = row.teacher and (not row.opid_term or config.opid.lambda_skill > 0) and config.opid.routing != "none"
  return (teacher or row.student_skills) and config.analyzer.backend != "none"


def validate(c) -> None:
  """Impossible combinations of `algo` with the other blocks; each is one error line saying what to set."""
  name = c.algo.name
  if name not in ROWS:
    raise UserError(f"algo.name={name!r} is not one of {', '.join(ROWS)}")
  row = ROWS[name]
  if c.algo.step_weight != -1.0 and c.algo.step_weight < 0:
    raise UserError(f"algo.step_weight={c.algo.step_weight} must be >= 0 (or -1: the row's default)")
  if not 0 < c.algo.gamma <= 1:
    raise UserError(f"algo.gamma={c.algo.gamma} must be in (0, 1]")
  for key in ("sdar_coef", "sdar_beta", "rlsd_lambda", "rlsd_warmdown", "skill_sd_coef"):
    if c.algo[key] < 0:
      raise UserError(f"algo.{key}={c.algo[key]} must be >= 0")
  if not 0 < c.algo.rlsd_eps < 1:
    raise UserError(f"algo.rlsd_eps={c.algo.rlsd_eps} must be in (0, 1)")
  if row.teacher and not row.opid_term and c.opid.lambda_skill > 0:
    raise UserError(
      f"algo.name={name} uses the skill through its own {'advantage weight' if row.rlsd else 'loss term'}, not "
      f"OPID's advantage term: set --config.opid.lambda_skill=0"
    )
  needs_skills = (row.teacher and not row.opid_term) or row.student_skills
  if needs_skills and c.analyzer.backend == "none":
    raise UserError(f"algo.name={name} needs skills: set analyzer.backend (openai, local or expert), not none")
  if row.teacher and not row.opid_term and c.opid.routing == "none":
    raise UserError(f"algo.name={name} needs a routed skill per step: set opid.routing (e.g. critical_first)")
  if (row.rlsd or row.distill) and c.opid.routing == "additive":
    raise UserError(f"algo.name={name} compares one teacher prompt per step: opid.routing=additive scores two")
