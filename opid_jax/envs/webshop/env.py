"""WebShop's text environment in plain Python (no Java, no Flask, no HTML): search, browse, choose options, buy.

A task id is a goal index (as a string) into the world's fixed goal order; indices 0..499 are the test
split. Actions are WebShop's `search[query]` and `click[x]`; anything not allowed on the current page is a
no-op with reward 0. Buying ends the episode with the reward of the published RL setups (SUCCESS_REWARD
when the purchase score is exactly 1.0, else 0); `info['score']` carries the raw 0..1 score. After
`max_steps` actions without a purchase the episode ends with score 0 (`info['truncated']`).

Use: `world = load_world(data_dir)` once per process, then `WebShopEnv(world)` per episode slot.
"""

from __future__ import annotations

import re

from opid_jax.envs.base import Env, Hindsight, ResetResult, StepResult
from opid_jax.envs.webshop import pages
from opid_jax.envs.webshop.data import NO_PRICE_LIMIT, Goal, Product
from opid_jax.envs.webshop.reward import goal_option_items, purchase_score
from opid_jax.envs.webshop.world import WebShopWorld, load_world

# The paper's WebShop settings (method.md section 2), for the config system to wire in.
MAX_STEPS = 15  # actions per episode
HISTORY_LENGTH = 2  # past (observation, action) pairs shown in the prompt
TASKS_PER_BATCH = 16  # distinct goals per training iteration
GROUP_SIZE = 8  # rollouts per goal
SUCCESS_REWARD = 10.0  # episode reward for a purchase that scores exactly 1.0
INVALID_PENALTY = 0.1  # subtracted from a step's score when the policy's output was malformed

_ACTION = re.compile(r"(.+)\[(.+)\]")  # WebShop's parse: the name, then everything up to the last ']'


def parse_action(action: str) -> tuple[str, str | None]:
  match = _ACTION.match(action)
  if match is None:
    return action, None
  return match.group(1), match.group(2)


class WebShopEnv(Env):
  max_steps = MAX_STEPS

  def __init__(self, world: WebShopWorld | None = None, data_dir: str | None = None, max_steps: int = MAX_STEPS):
    self.world = world if world is not None else load_world(data_dir)
    self.max_steps = max_steps
    self.goal: Goal | None = None

  # --- episode state -----------------------------------------------------------------------------
  def _clear_session(self) -> None:
    self.keywords: list[str] | None = None
    self.results_page = 1
    self.asin: str | None = None
    self.options: dict[str, str] = {}

  def reset(self, task_id: str) -> ResetResult:
    self.task_index = int(task_id)
    self.goal = self.world.goals[self.task_index]
    self.done, self.truncated = False, False
    self.score, self.steps = 0.0, 0
    self._clear_session()
    self.page = pages.search_page(self.goal.instruction_text)
    return ResetResult(
      observation=self.page.observation,
      task=self.goal.instruction_text,
      task_type=self.goal.category,
      admissible_actions=self.page.admissible_actions,
      info=self._info(accepted=True),
    )

  def _info(self, accepted: bool, **extra) -> dict:
    return {
      "goal_index": self.task_index,
      "page": self.page.name,
      "action_accepted": accepted,
      "available_actions": {"has_search_bar": self.page.has_search_bar, "clickables": list(self.page.clickables)},
      "score": self.score,
      "won": self.done and self.score == 1.0,
      "steps": self.steps,
      "truncated": self.truncated,
      **extra,
    }

  # --- transitions (WebShop's SimServer.receive) -------------------------------------------------
  def _show_results(self, keywords: list[str], page_number: int) -> None:
    self.keywords, self.results_page = keywords, page_number
    self.asin, self.options = None, {}
    found = self.world.search(" ".join(keywords))
    start = (page_number - 1) * pages.PRODUCTS_PER_PAGE
    shown = found[max(start, 0) : max(start + pages.PRODUCTS_PER_PAGE, 0)]
    self.page = pages.results_page(self.goal.instruction_text, shown, page_number, len(found))

  def _show_item(self) -> None:
    self.page = pages.item_page(self.goal.instruction_text, self.world.by_asin[self.asin])

  def _click(self, target: str) -> dict:
    clickable = self.page.clickables[target]
    current = self.page.name
    if target == pages.BUY_NOW.lower():
      return self._buy()
    if target == pages.BACK_TO_SEARCH.lower():
      self._clear_session()
      self.page = pages.search_page(self.goal.instruction_text)
    elif target == pages.NEXT_PAGE.lower() and current == "results":
      self._show_results(self.keywords, self.results_page + 1)
    elif target == pages.PREV_PAGE.lower() and current == "results":
      self._show_results(self.keywords, self.results_page - 1)
    elif target == pages.PREV_PAGE.lower() and current in ("description", "features", "reviews"):
      self._show_item()
    elif target == pages.PREV_PAGE.lower() and current == "item":
      self._show_results(self.keywords, self.results_page)
    elif target in ("description", "features", "reviews"):
      self.page = pages.sub_page(self.goal.instruction_text, self.world.by_asin[self.asin], target)
    else:
      if clickable.kind == "product":
        self.asin = target.upper()
      elif clickable.kind == "option":
        self.options[clickable.option_name] = target
      self._show_item()
    return {}

  def _buy(self) -> dict:
    product = self.world.by_asin[self.asin]
    breakdown = purchase_score(product, self.goal, self.world.prices[self.asin], self.options)
    self.done, self.score = True, breakdown.score
    self.page = pages.done_page(self.asin, self.options, breakdown.score)
    return {
      "purchased_asin": self.asin,
      "purchased_options": dict(self.options),
      "score_details": {
        "attributes": (breakdown.attributes_matched, breakdown.n_attributes),
        "options": (breakdown.options_matched, breakdown.n_options),
        "price_ok": breakdown.price_ok,
        "r_type": breakdown.type_match.r_type,
      },
    }

  def step(self, action: str) -> StepResult:
    if self.goal is None:
      raise RuntimeError("reset() first")
    if self.done:
      return self._result(accepted=False)
    self.steps += 1
    name, argument = parse_action(action.strip())
    argument = argument.lower() if argument is not None else None
    accepted, extra = True, {}
    if name == "search" and argument:
      self._show_results(argument.split(" "), 1)
    elif name == "click" and argument in self.page.clickables and argument != "search":
      extra = self._click(argument)
    else:
      accepted = False
    if not self.done and self.steps >= self.max_steps:
      self.done, self.truncated = True, True  # out of steps without a purchase: score 0
    return self._result(accepted, **extra)

  def _result(self, accepted: bool, **extra) -> StepResult:
    won = self.done and self.score == 1.0
    bought_now = "purchased_asin" in extra
    return StepResult(
      observation=self.page.observation,
      reward=SUCCESS_REWARD if (won and bought_now) else 0.0,
      done=self.done,
      won=won,
      admissible_actions=self.page.admissible_actions,
      info=self._info(accepted, **extra),
    )

  # --- privileged knowledge ----------------------------------------------------------------------
  def hindsight(self) -> Hindsight:
    if self.goal is None:
      return Hindsight()
    product = self.world.by_asin[self.goal.asin]
    return Hindsight(
      expert_actions=expert_actions(self.world, self.goal), notes=goal_notes(self.world, self.goal, product)
    )


def _search_text(text: str) -> str:
  return re.sub(r"[\[\]]", " ", text).lower().strip()


def candidate_queries(goal: Goal, product: Product) -> list[str]:
  instruction = product.instruction_text or goal.instruction_text.split(", and price lower than")[0]
  queries = [instruction, f"{product.query} {' '.join(goal.attributes)}", product.title]
  return [q for q in (_search_text(q) for q in queries) if q]


def expert_options(goal: Goal, product: Product) -> dict[str, str]:
  """The product's option values the goal asks for (human goals name values only: their group is looked up)."""
  chosen = {}
  for item in goal_option_items(goal.goal_options):
    if isinstance(item, tuple):
      name, value = item
      if value in product.options.get(name, ()):
        chosen[name] = value
    else:
      value = str(item).lower()
      name = next((n for n, values in product.options.items() if value in values and n not in chosen), None)
      if name is not None:
        chosen[name] = value
  return chosen


def expert_actions(world: WebShopWorld, goal: Goal) -> tuple[str, ...]:
  """search -> (next page)* -> product -> each goal option -> buy; empty when no query finds the target."""
  product = world.by_asin[goal.asin]
  for query in candidate_queries(goal, product):
    ranked = [p.asin for p in world.search(query)]
    if goal.asin in ranked:
      position = ranked.index(goal.asin)
      break
  else:
    return ()
  actions = [f"search[{query}]"] + ["click[next >]"] * (position // pages.PRODUCTS_PER_PAGE)
  actions.append(f"click[{goal.asin.lower()}]")
  actions += [f"click[{value}]" for value in expert_options(goal, product).values()]
  actions.append("click[buy now]")
  return tuple(actions)


def goal_notes(world: WebShopWorld, goal: Goal, product: Product) -> str:
  options = goal_option_items(goal.goal_options)
  option_text = ", ".join(f"{o[0]}: {o[1]}" if isinstance(o, tuple) else str(o) for o in options) or "none"
  limit = "none" if goal.price_upper >= NO_PRICE_LIMIT else f"{goal.price_upper:.2f} dollars"
  price = world.prices[goal.asin]
  expert_score = purchase_score(product, goal, price, expert_options(goal, product)).score
  return (
    f'Target product {goal.asin}: "{product.title}" ({product.product_category}). '
    f"Attributes to satisfy: {', '.join(goal.attributes) or 'none'}. Options to select: {option_text}. "
    f"Price limit: {limit}; it sells for {price:.2f} dollars ({product.price_tag}). "
    f"Buying it with those options scores {expert_score:.2f}."
  )
