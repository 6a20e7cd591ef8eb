"""From finished trajectories to PPO step samples: old / reference / skill-conditioned scoring and advantages.

Scoring goes through one function, `score(prompts, responses, params, units)`. The analyzer runs in the background
while the reference log-probs are computed. Then every step's prompt and, for steps routed a skill, its
skill-augmented prompt are scored in one pass, each pair in one unit (the same packed row: same shapes, same
kernels), so that logp_skill - logp_old carries no noise from batch shapes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from opid_jax.agent import prompts as prompt_lib
from opid_jax.agent.trajectory import Step, Trajectory
from opid_jax.rl import advantages as adv, algorithms
from opid_jax.rl.batch import StepSample
from opid_jax.skills import routing

# score(prompts, responses, params, units): per-token log-probs; `units` lists groups of sample indices to score in
# the same packed row (None: each alone).
ScoreFn = Callable[..., list[np.ndarray]]


@dataclasses.dataclass(frozen=True)
class OpidSettings:
  lambda_skill: float = 0.001
  routing: str = "critical_first"
  adv_norm: str = "mean_std"
  group_stats: str = "steps"
  invalid_penalty: float = 0.1
  use_reference: bool = False
  max_prompt_tokens: int | None = 2048
  truncation_side: str = "left"  # as the rollout's: a skill prompt over the limit is cut on the left or refused
  teacher: bool = False  # score the teacher prompts even without OPID's term (rows that use l_T otherwise)
  step_weight: float = 0.0  # GiGPO: A += step_weight * A_step (step groups of identical observations)
  gamma: float = 0.95  # GiGPO: discount of the per-step returns
  rlsd_lambda: float | None = None  # RLSD: this iteration's reweighting share (None: no reweighting)
  rlsd_eps: float = 0.2

  @property
  def skills_enabled(self) -> bool:
    """Whether the teacher (skill-augmented) prompts are scored."""
    return (self.lambda_skill > 0 or self.teacher) and self.routing != "none"


def user_prompt_of(traj: Trajectory, step: Step) -> str:
  """The step's user message before the chat template: where skills are injected."""
  return step.user_prompt_text


def flatten_steps(trajectories: Sequence[Trajectory]) -> list[tuple[Trajectory, Step]]:
  return [(t, s) for t in trajectories for s in t.steps]


def skill_prompt_ids(
  trajectories: Sequence[Trajectory], analyses: Sequence[Any] | None, tokenizer, settings: OpidSettings
) -> list[list[list[int]]]:
  """Per flattened step: the token ids of its skill-augmented (teacher) prompts; empty when no skill is routed to it
  (two prompts under `additive` routing, one otherwise)."""
  by_traj = {a.traj_id: a for a in (analyses or [])}
  out: list[list[list[int]]] = []
  for traj in trajectories:
    result = by_traj.get(traj.traj_id)
    skills = result.skills if result is not None and result.has_skill else None
    texts = [user_prompt_of(traj, s) for s in traj.steps]
    for step, teachers in zip(traj.steps, routing.teacher_prompts(texts, skills, settings.routing)):
      out.append(
        [
          prompt_lib.tokenize_prompt(
            tokenizer,
            prompt_lib.to_chat_text(tokenizer, text) + step.response_prefix,  # as the rollout's prompt
            settings.max_prompt_tokens,
            settings.truncation_side,
            what="skill-augmented prompt",
          )
          for text in teachers
        ]
      )
  return out


def build_samples(
  trajectories: Sequence[Trajectory],
  *,
  score: ScoreFn,
  params,
  ref_params,
  tokenizer,
  settings: OpidSettings,
  analysis_handle=None,
) -> tuple[list[StepSample], dict[str, float]]:
  """Scores every step sample and computes A = A_ep + lambda * A_skill per token."""
  steps = flatten_steps(trajectories)
  if not steps:
    return [], {"samples": 0}
  scored_tokens = [0]

  def score_counted(prompts, responses, params, units=None):
    scored_tokens[0] += sum(len(p) + len(r) for p, r in zip(prompts, responses))
    return score(prompts, responses, params, units)

  prompts = [s.prompt_ids for _, s in steps]
  responses = [s.response_ids for _, s in steps]
  logp_ref = score_counted(prompts, responses, ref_params) if settings.use_reference else None

  analyses = analysis_handle.result() if analysis_handle is not None else None
  teacher_ids: list[list[list[int]]] = [[] for _ in steps]
  if settings.skills_enabled and analyses is not None:
    teacher_ids = skill_prompt_ids(trajectories, analyses, tokenizer, settings)
  # One call: every step's prompt, then its teacher prompts, each step with its teachers in one unit (one row).
  all_prompts, all_responses, units = list(prompts), list(responses), []
  for i, teachers in enumerate(teacher_ids):
    units.append([i] + list(range(len(all_prompts), len(all_prompts) + len(teachers))))
    all_prompts += teachers
    all_responses += [responses[i]] * len(teachers)
  scored = score_counted(all_prompts, all_responses, params, units if len(all_prompts) > len(steps) else None)
  logp_old = scored[: len(steps)]
  logp_teachers = [[scored[j] for j in unit[1:]] for unit in units]

  returns = np.array([t.episode_return for t, _ in steps])
  valid = np.array([s.valid for _, s in steps])
  scores = adv.step_scores(returns, valid, settings.invalid_penalty)
  a_ep = adv.group_advantages(
    scores,
    np.array([t.group_id for t, _ in steps]),
    np.array([t.traj_id for t, _ in steps]),
    norm=settings.adv_norm,
    stats=settings.group_stats,
  )
  if settings.step_weight:
    a_ep = a_ep + settings.step_weight * _gigpo_step_advantages(trajectories, settings.gamma)
  a_skill = adv.skill_advantages(logp_teachers, logp_old)
  if settings.rlsd_lambda is None:
    total = adv.total_advantages(a_ep, a_skill, settings.lambda_skill)
  else:
    total = [
      algorithms.rlsd_advantages(a, t[0], old, lam=settings.rlsd_lambda, eps=settings.rlsd_eps)
      if t
      else np.full(len(old), a)
      for a, t, old in zip(a_ep, logp_teachers, logp_old)
    ]
  samples = [
    StepSample(
      prompt_ids=list(p),
      response_ids=list(r),
      old_logp=np.asarray(lo, np.float32),
      advantages=np.asarray(a, np.float32),
      ref_logp=None if logp_ref is None else np.asarray(logp_ref[i], np.float32),
      source=(traj.traj_id, step.index),
      episode_advantage=float(a_ep[i]),
      skill_logp_delta=float(np.sum(a_skill[i])) if logp_teachers[i] else None,
      teacher_logp=np.asarray(logp_teachers[i][0], np.float32) if len(logp_teachers[i]) == 1 else None,
    )
    for i, ((traj, step), p, r, lo, a) in enumerate(zip(steps, prompts, responses, logp_old, total))
  ]
  has_skill = np.array([bool(t) for t in logp_teachers])
  metrics = adv.advantage_metrics(a_ep, a_skill, has_skill, settings.lambda_skill)
  metrics["samples"] = len(samples)
  metrics["response_tokens"] = int(sum(len(r) for r in responses))
  metrics["sample_tokens"] = int(sum(len(p) + len(r) for p, r in zip(prompts, responses)))
  metrics["scored_tokens"] = scored_tokens[0]  # over every scoring pass (old, reference, skill)
  return samples, metrics


def _gigpo_step_advantages(trajectories: Sequence[Trajectory], gamma: float) -> np.ndarray:
  """GiGPO's A_step per flattened step: discounted returns normalised within groups of identical observations."""
  returns = [algorithms.discounted_step_returns([s.reward for s in t.steps], gamma) for t in trajectories]
  return algorithms.step_group_advantages(
    [s.observation for t in trajectories for s in t.steps],
    [t.group_id for t in trajectories for _ in t.steps],
    np.concatenate(returns) if returns else np.zeros(0),
  )
