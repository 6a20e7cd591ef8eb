"""From finished trajectories to PPO step samples: old / reference / skill-conditioned scoring and advantages.

Scoring goes through one function, `score(prompts, responses, params)`; the analyzer runs in the background
while the old and reference log-probs are computed, and its skills are only waited for afterwards.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from opid_jax.agent import prompts as prompt_lib
from opid_jax.agent.trajectory import Step, Trajectory
from opid_jax.rl import advantages as adv
from opid_jax.rl.batch import StepSample
from opid_jax.skills import routing

ScoreFn = Callable[[Sequence[Sequence[int]], Sequence[Sequence[int]], Any], list[np.ndarray]]


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

  @property
  def skills_enabled(self) -> bool:
    return self.lambda_skill > 0 and self.routing != "none"


def user_prompt_of(traj: Trajectory, step: Step) -> str:
  """The step's user message before the chat template: where skills are injected."""
  return step.user_prompt_text


def flatten_steps(trajectories: Sequence[Trajectory]) -> list[tuple[Trajectory, Step]]:
  return [(t, s) for t in trajectories for s in t.steps]


def skill_prompt_ids(
  trajectories: Sequence[Trajectory], analyses: Sequence[Any] | None, tokenizer, settings: OpidSettings
) -> list[list[int] | None]:
  """Per flattened step: the token ids of the skill-augmented prompt, or None (no skill for that step)."""
  by_traj = {a.traj_id: a for a in (analyses or [])}
  out: list[list[int] | None] = []
  for traj in trajectories:
    result = by_traj.get(traj.traj_id)
    skills = result.skills if result is not None and result.has_skill else None
    texts = [user_prompt_of(traj, s) for s in traj.steps]
    for step, augmented in zip(traj.steps, routing.augmented_prompts(texts, skills, settings.routing)):
      if augmented is None:
        out.append(None)
      else:
        chat = prompt_lib.to_chat_text(tokenizer, augmented) + step.response_prefix  # as the rollout's prompt
        out.append(
          prompt_lib.tokenize_prompt(
            tokenizer, chat, settings.max_prompt_tokens, settings.truncation_side, what="skill-augmented prompt"
          )
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
  raw_score = score

  def score(prompts, responses, params):
    scored_tokens[0] += sum(len(p) + len(r) for p, r in zip(prompts, responses))
    return raw_score(prompts, responses, params)

  prompts = [s.prompt_ids for _, s in steps]
  responses = [s.response_ids for _, s in steps]
  logp_old = score(prompts, responses, params)
  logp_ref = score(prompts, responses, ref_params) if settings.use_reference else None

  analyses = analysis_handle.result() if analysis_handle is not None else None
  logp_skill: list[np.ndarray | None] = [None] * len(steps)
  if settings.skills_enabled and analyses is not None:
    skill_ids = skill_prompt_ids(trajectories, analyses, tokenizer, settings)
    routed = [i for i, ids in enumerate(skill_ids) if ids is not None]
    if routed:
      scored = score([skill_ids[i] for i in routed], [responses[i] for i in routed], params)
      for i, lp in zip(routed, scored):
        logp_skill[i] = lp

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
  a_skill = adv.skill_advantages(logp_skill, logp_old)
  total = adv.total_advantages(a_ep, a_skill, settings.lambda_skill)
  samples = [
    StepSample(
      prompt_ids=list(p),
      response_ids=list(r),
      old_logp=np.asarray(lo, np.float32),
      advantages=np.asarray(a, np.float32),
      ref_logp=None if logp_ref is None else np.asarray(logp_ref[i], np.float32),
      source=(traj.traj_id, step.index),
      episode_advantage=float(a_ep[i]),
      skill_logp_delta=None if logp_skill[i] is None else float(np.sum(a_skill[i])),
    )
    for i, ((traj, step), p, r, lo, a) in enumerate(zip(steps, prompts, responses, logp_old, total))
  ]
  has_skill = np.array([lp is not None for lp in logp_skill])
  metrics = adv.advantage_metrics(a_ep, a_skill, has_skill, settings.lambda_skill)
  metrics["samples"] = len(samples)
  metrics["response_tokens"] = int(sum(len(r) for r in responses))
  metrics["sample_tokens"] = int(sum(len(p) + len(r) for p, r in zip(prompts, responses)))
  metrics["scored_tokens"] = scored_tokens[0]  # over every scoring pass (old, reference, skill)
  return samples, metrics
