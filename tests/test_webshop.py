"""WebShop text env: reward terms, page text, the action rules, real-product records and the offline catalogue."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import pytest
import shared_data

from opid_jax.envs.webshop import catalogue, data
from opid_jax.envs.webshop.env import (
  GROUP_SIZE,
  HISTORY_LENGTH,
  INVALID_PENALTY,
  MAX_STEPS,
  SUCCESS_REWARD,
  TASKS_PER_BATCH,
  WebShopEnv,
  candidate_queries,
  parse_action,
)
from opid_jax.envs.webshop.eval_goals import summarize_episodes
from opid_jax.envs.webshop.fuzzy import normalize_color, preprocess, token_set_ratio
from opid_jax.envs.webshop.reward import attribute_matches, name_nouns, option_matches, purchase_score, type_factor
from opid_jax.envs.webshop.world import TEST_GOALS, build_world, load_world

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_WEBSHOP = pathlib.Path(shared_data.SHARED_DATA) / "webshop"


# --- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def catalogue_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("webshop_catalogue")
  catalogue.write_catalogue(str(out), n=300, seed=0)
  return str(out)


@pytest.fixture(scope="module")
def world(catalogue_dir):
  return load_world(catalogue_dir)


def _raw_product(
  asin,
  name,
  pricing="$12.50",
  options="",
  description="Warm socks.",
  bullets=("Soft cotton", "Machine washable"),
  query="Socks",
  category_path="Clothing › Men › Socks",
):
  return {
    "asin": asin,
    "name": name,
    "full_description": description,
    "small_description": list(bullets),
    "pricing": pricing,
    "customization_options": options,
    "category": "fashion",
    "query": query,
    "product_category": category_path,
    "images": ["x.jpg"],
  }


def _option(*values):
  return [{"value": v, "price": 1.0, "image": None, "is_selected": False, "url": None} for v in values]


@pytest.fixture(scope="module")
def tiny_world():
  """Two hand-made products, one goal per colour of the first: small enough for golden strings."""
  raw = [
    _raw_product("B000000001", "Acme Cotton Socks", options={"Color": _option("Navy/White", "Black"), "Size": None}),
    _raw_product("B000000002", "Bolt Wool Socks", pricing="$20.00 to $30.00", query="Wool socks"),
  ]
  attributes = {
    "B000000001": {
      "attributes": ["soft cotton"],
      "instruction": "Find me soft cotton socks",
      "instruction_attributes": ["soft cotton"],
    },
    "B000000002": {"attributes": ["wool"]},
  }
  return build_world(data.build_products(raw, attributes))


# --- fuzzy matching and the reward ------------------------------------------------------------------
def test_token_set_ratio_hand_computed():
  # common "machine"; "machine wash" vs "machine washable": 2 * 12 / (12 + 16) = 85.7 -> 86
  assert token_set_ratio("machine wash", "machine washable") == 86
  # common "tea"; "tea tree" vs "tea green": LCS 7 -> 2 * 7 / 17 = 82.4 -> 82
  assert token_set_ratio("tea tree", "green tea") == 82
  assert token_set_ratio("Soft-Grey!", "grey soft") == 100  # punctuation and case do not count
  assert token_set_ratio("", "grey") == 0
  assert preprocess(("color", "navy blue")) == "color    navy blue"  # a goal's (name, value) pair


@pytest.mark.parametrize(
  "text, cleaned",
  [
    ("Café Noir", "caf noir"),  # U+00E9 is in thefuzz 0.19's dropped range U+0080..U+00FF
    ("Über\u00a0Soft", "bersoft"),  # so are U+00DC and the no-break space: deleted, not spaced
    ("Łódź", "łdź"),  # U+0141 and U+017A are kept (lower-cased), U+00F3 is dropped
    ("深蓝 Navy", "深蓝 navy"),  # CJK is kept
    ("Ÿ", "ÿ"),  # U+0178 is kept, and only then lower-cased into the dropped range
    ("Men’s", "men s"),  # U+2019 is kept, then spaced as a non-word character
    ("x_large", "x_large"),  # "_" is a word character
    ("Soft-Grey!", "soft grey"),
  ],
)
def test_preprocess_cleans_as_thefuzz_0_19(text, cleaned):
  assert preprocess(text) == cleaned


def test_option_match_keeps_underscores_and_non_latin1_text():
  # "_" joins a token: "x_large" no longer shares the token "large" (was 100 when "_" became a space)
  assert token_set_ratio("x_large", "large") == 83
  assert option_matches(["x_large"], {"size": "large"}) == 0
  assert option_matches({"size": "x_large"}, {"size": "x_large"}) == 1
  # characters above U+00FF survive: identical CJK options match (they were erased to "", which scores 0)
  assert token_set_ratio("深蓝", "深蓝") == 100
  assert option_matches({"color": "深蓝"}, {"color": "深蓝"}) == 1
  assert option_matches(["深蓝"], {"color": "浅蓝"}) == 0  # 50: one of two characters in common
  # U+0080..U+00FF is still dropped: "café" is "caf"
  assert token_set_ratio("Café", "caf") == 100


def test_normalize_color_follows_color_set_order():
  assert normalize_color("navy | white") == "navy"
  assert normalize_color("dark navy") == "dark"  # 'dark' precedes 'navy' in WebShop's list
  assert normalize_color("peppermint") == "mint"  # substring, WebShop's quirk
  assert normalize_color(("color", "black")) == "black"  # a pair: one element must equal the colour
  assert normalize_color(("color", "navy blue")) == ("color", "navy blue")
  assert normalize_color("espadrille") == "espadrille"


def _product(**overrides):
  fields = dict(
    asin="B0TEST0001",
    name="Acme Cotton Crew Socks",
    title="Acme Cotton Crew Socks",
    description="Warm and breathable.",
    bullet_points=["Soft cotton blend", "Machine washable"],
    category="fashion",
    query="socks",
    product_category="Clothing › Men › Socks",
    price_tag="$20.0",
    pricing=[20.0],
    options={},
    attributes=["machine wash", "tea tree"],
  )
  fields.update(overrides)
  return data.Product(**fields)


def _goal(**overrides):
  fields = dict(
    asin="B0TEST0001",
    category="fashion",
    query="socks",
    name="Acme Cotton Crew Socks",
    product_category="Clothing › Men › Socks",
    instruction_text="Find me socks",
    attributes=("machine washable",),
    price_upper=30.0,
    goal_options={},
  )
  fields.update(overrides)
  return data.Goal(**fields)


def test_attribute_matches_fuzzy_then_substring():
  product = _product()
  text = (product.title, product.bullet_points, product.description)
  assert attribute_matches(["machine washable"], product.attributes, *text) == 1  # fuzzy 86 > 85
  assert attribute_matches(["green tea"], product.attributes, *text) == 0  # fuzzy 82, not in the text
  assert attribute_matches(["soft cotton"], product.attributes, *text) == 1  # substring of a bullet point
  assert attribute_matches(["crew socks"], product.attributes, *text) == 1  # substring of the title
  assert attribute_matches(["breathable"], product.attributes, *text) == 1  # substring of the description
  assert attribute_matches(["waterproof", "machine washable"], product.attributes, *text) == 1


def test_option_matches_colour_normalisation():
  assert option_matches({"color": "navy blue"}, {"color": "navy | white"}) == 1  # 'navy' in "color navy blue"
  assert option_matches({"color": "navy blue"}, {"color": "dark navy"}) == 0  # normalised to 'dark'
  assert option_matches({"color": "black"}, {"color": "jet black"}) == 1  # both sides become 'black'
  assert option_matches({"size": "x-large"}, {"size": "x-large", "color": "red"}) == 1
  assert option_matches({"size": "x-large", "color": "red"}, {"size": "large"}) == 1  # 'large' within "size x large"
  assert option_matches({"size": "small"}, {"size": "large"}) == 0
  assert option_matches({"flavor name": "peppermint"}, {"flavor name": "peppermint"}) == 0  # WebShop's 'mint' quirk
  assert option_matches(["red", "large"], {"color": "red", "size": "large"}) == 2  # human goals: plain values
  assert option_matches({"color": "red"}, {}) == 0


def test_purchase_score_combines_every_term():
  product = _product()
  goal = _goal(attributes=("machine washable", "waterproof"), goal_options={"color": "black", "size": "large"})
  # 1 of 2 attributes, 1 of 2 options, price ok: 3 / 5
  assert purchase_score(product, goal, 25.0, {"color": "black", "size": "small"}).score == pytest.approx(0.6)
  # price over the limit: 2 / 5
  assert purchase_score(product, goal, 35.0, {"color": "black", "size": "small"}).score == pytest.approx(0.4)
  perfect = _goal(goal_options={"color": "black"})
  assert purchase_score(product, perfect, 30.0, {"color": "black"}).score == 1.0  # limit is inclusive
  # a different product type halves it: names share 1 of 5 nouns (0.2 is not > 0.2), no query or category match
  other = _goal(
    query="rugs", product_category="Home › Rugs", name="Acme Shag Area Rug Runner", goal_options={"color": "black"}
  )
  assert purchase_score(product, other, 30.0, {"color": "black"}).score == pytest.approx(0.5)


def test_type_factor_branches():
  same = dict(purchased_query="socks", purchased_category="A › B › C", purchased_name="Acme Cotton Socks")
  assert name_nouns("Acme Women's Socks for the Gym, 2 Pack") == ["acme", "women", "socks", "gym", "pack"]
  # the query matches: 1.0 although the names share only 1 of 5 nouns (0.2 is not > 0.2)
  assert (
    type_factor(**same, goal_query="socks", goal_category="X › Y", goal_name="Socks Hat Scarf Glove Belt").r_type == 1.0
  )
  # two category levels match (the names share 1 of 5 nouns: 0.2)
  assert (
    type_factor(**same, goal_query="x", goal_category="A › B › Z", goal_name="Cotton Shirt Hat Belt Scarf").r_type
    == 1.0
  )
  # > 20 % of the goal's nouns
  assert type_factor(**same, goal_query="x", goal_category="Z", goal_name="Cotton Shirt Hat Belt").r_type == 1.0
  # nothing matches well enough: title_score exactly 0.2
  assert type_factor(**same, goal_query="x", goal_category="Z", goal_name="Cotton Shirt Hat Belt Scarf").r_type == 0.5
  # title_score 1 / 11 < 0.1, even though the query matches
  eleven = "Cotton Shirt Hat Belt Scarf Glove Coat Boot Vest Tie Cap"
  assert type_factor(**same, goal_query="socks", goal_category="Z", goal_name=eleven).r_type == 0.1
  # no noun in common
  assert type_factor(**same, goal_query="socks", goal_category="A › B", goal_name="Wool Hat").r_type == 0.0
  # a goal name without nouns counts as 0.2
  assert type_factor(**same, goal_query="x", goal_category="Z", goal_name="for the").r_type == 0.5
  assert type_factor(**same, goal_query="socks", goal_category="Z", goal_name="for the").r_type == 1.0


# --- data loading --------------------------------------------------------------------------------------
def test_pricing_and_options_parsing():
  assert data.parse_pricing("$877.80") == ([877.8], "$877.8")
  assert data.parse_pricing("$1,299.00 to $1,499.99") == ([1299.0, 1499.99], "$1299.0 to $1499.99")
  assert data.parse_pricing("") == ([100.0], "$100.0")
  assert data.parse_options({"Color": _option(" Navy/White "), "Size": None}) == {"color": ["navy | white"]}
  assert data.parse_options("") == {}


def test_products_skip_bad_and_repeated_asins():
  raw = [
    _raw_product("B000000001", "A"),
    _raw_product("nan", "B"),
    _raw_product("B0000000011", "C"),
    _raw_product("B000000001", "D"),
  ]
  products = data.build_products(raw, {})
  assert [p.name for p in products] == ["A"]
  assert products[0].attributes == ["DUMMY_ATTR"] and products[0].instruction_text is None


def test_synthetic_goals_one_per_option_combination(tiny_world):
  goals = tiny_world.goals
  limit = goals[0].price_upper  # drawn once per product: the larger of two of 20, 30, 40, 50 (price 12.5)
  assert limit in (30.0, 40.0, 50.0) and all(g.price_upper == limit for g in goals)
  assert sorted(g.instruction_text for g in goals) == [
    f"Find me soft cotton socks with color: black, and price lower than {limit:.2f} dollars",
    f"Find me soft cotton socks with color: navy | white, and price lower than {limit:.2f} dollars",
  ]
  assert all(g.attributes == ("soft cotton",) and g.name == "Acme Cotton Socks" for g in goals)
  assert 20.0 <= tiny_world.prices["B000000002"] <= 30.0  # a price range is bought at a draw inside it


def test_human_goals_from_items_human_ins(tmp_path):
  raw = [
    _raw_product(
      "B000000001",
      "Acme Cotton Socks",
      options={"Color": _option("Navy/White", "Black"), "Size": _option("Large", "Small")},
    )
  ]
  human = {
    "B000000001": [
      {
        "instruction": "i want black cotton socks in large.",
        "instruction_attributes": ["cotton socks"],
        "instruction_options": ["black", "large"],
      },
      {"instruction": "no attributes: skipped", "instruction_attributes": [], "instruction_options": []},
    ]
  }
  paths = {
    name: tmp_path / name for name in ("items_shuffle_1000.json", "items_ins_v2_1000.json", "items_human_ins.json")
  }
  for name, content in zip(paths, (raw, {"B000000001": {"attributes": ["cotton"]}}, human)):
    paths[name].write_text(json.dumps(content))
  with pytest.raises(data.WebShopDataMissingError, match="items_human_ins.json"):
    load_world(str(tmp_path), use_human_goals=True, human_goals_path=str(tmp_path / "absent.json"))
  world = load_world(str(tmp_path), use_human_goals=True, human_goals_path=str(paths["items_human_ins.json"]))
  [goal] = world.goals
  assert goal.instruction_text.startswith("i want black cotton socks in large, and price lower than ")
  env = WebShopEnv(world)
  env.reset("0")
  actions = env.hindsight().expert_actions
  assert actions[-3:] == ("click[black]", "click[large]", "click[buy now]")
  for action in actions:
    result = env.step(action)
  assert result.won and result.info["score"] == 1.0


def test_missing_files_raise_one_clear_line(tmp_path):
  with pytest.raises(data.WebShopDataMissingError) as caught:
    load_world(str(tmp_path))
  message = str(caught.value)
  assert isinstance(caught.value, FileNotFoundError)
  assert "items_shuffle_1000.json" in message and "items_ins_v2_1000.json" in message
  assert "setup.sh" in message and "webshop.catalogue" in message and "\n" not in message
  (tmp_path / "items_ins_v2_1000.json").write_text("{}")
  with pytest.raises(data.WebShopDataMissingError, match=r"items_shuffle_1000\.json not found"):
    load_world(str(tmp_path))


# --- pages and actions (golden strings) ----------------------------------------------------------------
def test_parse_action_like_webshop():
  assert parse_action("search[red socks]") == ("search", "red socks")
  assert parse_action("click[a] trailing") == ("click", "a")
  assert parse_action("click[]") == ("click[]", None)
  assert parse_action("buy") == ("buy", None)


def test_every_page_renders_like_webshop(tiny_world):
  env = WebShopEnv(tiny_world)
  goal_index = next(i for i, g in enumerate(tiny_world.goals) if g.goal_options["color"] == "black")
  start = env.reset(str(goal_index))
  instruction = start.task
  head = f"Instruction: [SEP] {instruction} [SEP] Back to Search [SEP] "
  assert start.observation == f"WebShop [SEP] Instruction: [SEP] {instruction} [SEP] Search"
  assert start.admissible_actions == ["search[<your query>]", "click[search]"]
  assert start.task_type == "fashion"

  results = env.step("search[cotton socks]")
  assert results.observation == head + (
    "Page 1 (Total results: 2) [SEP] Next > [SEP] B000000001 [SEP] "
    "Acme Cotton Socks [SEP] $12.5 [SEP] B000000002 [SEP] Bolt Wool Socks [SEP] "
    "$20.0 to $30.0"
  )
  assert results.admissible_actions == [
    "click[back to search]",
    "click[next >]",
    "click[b000000001]",
    "click[b000000002]",
  ]

  item = env.step("click[b000000001]")
  item_text = (
    "< Prev [SEP] color [SEP] navy | white [SEP] black [SEP] Acme Cotton Socks [SEP] Price: $12.5 [SEP] "
    "Rating: N.A. [SEP] Description [SEP] Features [SEP] Reviews [SEP] Buy Now"
  )
  assert item.observation == head + item_text
  assert item.admissible_actions == [
    "click[back to search]",
    "click[< prev]",
    "click[description]",
    "click[features]",
    "click[reviews]",
    "click[buy now]",
    "click[navy | white]",
    "click[black]",
  ]
  assert env.step("click[black]").observation == head + item_text  # choosing an option keeps the page

  sub_actions = ["click[back to search]", "click[< prev]"]
  description = env.step("click[description]")
  assert description.observation == head + "< Prev [SEP] Warm socks."
  assert description.admissible_actions == sub_actions
  assert env.step("click[< prev]").observation == head + item_text
  assert env.step("click[features]").observation == head + "< Prev [SEP] Soft cotton [SEP] Machine washable"
  env.step("click[< prev]")
  assert env.step("click[reviews]").observation == head + "< Prev"
  env.step("click[< prev]")

  done = env.step("click[buy now]")  # the option chosen before the sub-pages is still chosen
  assert done.done and done.won and done.reward == SUCCESS_REWARD and done.info["score"] == 1.0
  assert done.observation == (
    "Thank you for shopping with us! [SEP] Your code: [SEP] None [SEP] (Paste it in your MTurk interface.) [SEP] "
    'Purchased [SEP] asin [SEP] B000000001 [SEP] options [SEP] {"color": "black"} [SEP] attrs [SEP] None [SEP] '
    "category [SEP] None [SEP] query [SEP] None [SEP] product category [SEP] None [SEP] Target [SEP] asin [SEP] "
    "options [SEP] attrs [SEP] price upper [SEP] instuction text [SEP] category [SEP] product category [SEP] "
    "query [SEP] Goal [SEP] None [SEP] Reward [SEP] Your score (min 0.0, max 1.0) [SEP] 1.0 [SEP] "
    "Reward Details [SEP] None"
  )
  assert done.admissible_actions == []
  after = env.step("click[buy now]")  # nothing happens once the episode is over
  assert after.done and after.reward == 0.0


def test_result_paging_and_navigation(world):
  env = WebShopEnv(world)
  env.reset("0")
  first = env.step("search[socks]")
  assert "Page 1 (Total results: " in first.observation and "click[< prev]" not in first.admissible_actions
  second = env.step("click[next >]")
  assert second.observation.startswith(first.observation.split("Page 1")[0] + "Page 2 (Total results: ")
  assert second.admissible_actions[:3] == ["click[back to search]", "click[< prev]", "click[next >]"]
  assert env.step("click[< prev]").observation == first.observation
  product = first.admissible_actions[2]
  env.step(product)
  assert env.step("click[< prev]").observation == first.observation  # item -> the results page it came from
  assert env.step("click[back to search]").observation == env.reset("0").observation


def test_invalid_actions_are_no_ops(world):
  env = WebShopEnv(world)
  start = env.reset("0")
  for action in ["click[search]", "click[buy now]", "search[]", "buy now", "click[b0nothing00]", "Search[socks]"]:
    result = env.step(action)
    assert (result.observation, result.reward, result.done) == (start.observation, 0.0, False)
    assert result.info["action_accepted"] is False
  results = env.step("search[socks]")
  for action in ["click[description]", "click[buy now]", "click[< prev]", "click[black]"]:
    assert env.step(action).observation == results.observation
  assert env.step("search[hat]").info["action_accepted"]  # searching works from any page


def test_episode_ends_after_max_steps_without_a_purchase(world):
  env = WebShopEnv(world)
  env.reset("0")
  for _ in range(MAX_STEPS - 1):
    assert not env.step("click[nothing]").done
  last = env.step("search[socks]")
  assert last.done and not last.won and last.reward == 0.0
  assert last.info["truncated"] and last.info["steps"] == MAX_STEPS and last.info["score"] == 0.0
  assert env.step("click[back to search]").observation == last.observation


# --- the generated catalogue ----------------------------------------------------------------------------
def test_catalogue_is_deterministic_and_in_webshop_schema(tmp_path):
  first, first_attrs = catalogue.generate(40, seed=3)
  again, _ = catalogue.generate(40, seed=3)
  other, _ = catalogue.generate(40, seed=4)
  assert json.dumps(first) == json.dumps(again) and json.dumps(first) != json.dumps(other)
  excerpt_keys = {
    "name",
    "product_information",
    "brand",
    "brand_url",
    "full_description",
    "pricing",
    "list_price",
    "availability_status",
    "images",
    "product_category",
    "average_rating",
    "small_description",
    "total_reviews",
    "total_answered_questions",
    "customization_options",
    "seller_id",
    "seller_name",
    "fulfilled_by_amazon",
    "fast_track_message",
    "aplus_present",
    "asin",
    "category",
    "query",
    "page",
    "small_description_old",
  }
  for raw in first:
    assert excerpt_keys <= set(raw) and len(raw["asin"]) == 10 and " › " in raw["product_category"]
    assert raw["pricing"] == "" or raw["pricing"].startswith("$")
    annotation = first_attrs[raw["asin"]]
    assert set(annotation.get("instruction_attributes", [])) <= set(annotation["attributes"])
  catalogue.main(["--out", str(tmp_path), "--n", "5", "--seed", "1"])
  assert sorted(os.listdir(tmp_path)) == ["items_ins_v2_5.json", "items_shuffle_5.json"]


def test_goal_splits(world):
  assert len(world.goals) > TEST_GOALS
  assert world.task_ids("test") == [str(i) for i in range(500)]
  assert world.task_ids("train")[0] == "500" and len(world.task_ids("train")) == len(world.goals) - 500


def test_goal_query_finds_target_on_page_one(world):
  found_by_instruction = 0
  for index in range(100):
    goal = world.goals[index]
    queries = candidate_queries(goal, world.by_asin[goal.asin])
    on_page_one = [goal.asin in [p.asin for p in world.search(q)][:10] for q in queries]
    found_by_instruction += on_page_one[0]
    assert any(on_page_one)
  assert found_by_instruction >= 90


def _goal_with_options(world):
  for index, goal in enumerate(world.goals[:TEST_GOALS]):
    if len(goal.goal_options) == 2 and all(normalize_color(v) == v for v in goal.goal_options.values()):
      return index, goal
  raise AssertionError("no test goal with two plain options")


def test_expert_path_buys_the_target_with_a_perfect_score(world):
  index, goal = _goal_with_options(world)
  env = WebShopEnv(world)
  env.reset(str(index))
  hindsight = env.hindsight()
  assert hindsight.expert_actions[0] == f"search[{candidate_queries(goal, world.by_asin[goal.asin])[0]}]"
  assert hindsight.expert_actions[-1] == "click[buy now]" and goal.asin in hindsight.notes
  for value in goal.goal_options.values():
    assert f"click[{value}]" in hindsight.expert_actions and value in hindsight.notes
  for action in hindsight.expert_actions:
    result = env.step(action)
  assert result.done and result.won and result.reward == SUCCESS_REWARD and result.info["score"] == 1.0


def _buy(world, index, goal_override=None, option_override=None):
  env = WebShopEnv(world)
  env.reset(str(index))
  actions = list(env.hindsight().expert_actions)
  if goal_override is not None:
    env.goal = goal_override
  if option_override is not None:
    old, new = option_override
    actions[actions.index(f"click[{old}]")] = f"click[{new}]"
  for action in actions:
    result = env.step(action)
  return result


def test_wrong_option_or_price_gives_the_expected_fraction(world):
  index, goal = _goal_with_options(world)
  product = world.by_asin[goal.asin]
  n_terms = len(goal.attributes) + 2 + 1
  name, value = next(iter(goal.goal_options.items()))
  goal_tokens = set(preprocess((name, value)).split())
  wrong = next(
    v for v in product.options[name] if v != value and not set(preprocess(normalize_color(v)).split()) & goal_tokens
  )
  result = _buy(world, index, option_override=(value, wrong))
  assert result.done and not result.won and result.reward == 0.0
  assert result.info["score"] == pytest.approx((n_terms - 1) / n_terms)
  too_cheap = dataclasses.replace(goal, price_upper=world.prices[goal.asin] - 0.01)
  result = _buy(world, index, goal_override=too_cheap)
  assert result.info["score"] == pytest.approx((n_terms - 1) / n_terms) and result.reward == 0.0


def test_eight_envs_on_one_goal_see_the_same_goal(world, catalogue_dir):
  envs = [WebShopEnv(world) for _ in range(GROUP_SIZE)]
  starts = [env.reset("7") for env in envs]
  assert len({(s.task, s.observation) for s in starts}) == 1
  # a fresh load (another worker process) orders and prices the goals identically: one fixed seed
  products_path, attributes_path = data.resolve_data_files(catalogue_dir)
  fresh = build_world(data.build_products(data.read_json(products_path), data.read_json(attributes_path)))
  assert [g.instruction_text for g in fresh.goals] == [g.instruction_text for g in world.goals]


# --- real WebShop records (shared data, read in place) -------------------------------------------------
@pytest.fixture(scope="module")
def excerpt_world():
  products = SHARED_WEBSHOP / "items_shuffle_1000.excerpt4.json"
  attributes = SHARED_WEBSHOP / "items_ins_v2_1000.json"
  if not (products.exists() and attributes.exists()):
    raise FileNotFoundError(f"shared WebShop data not found under {SHARED_WEBSHOP} (set OPID_SHARED_DATA)")
  return load_world(products_path=str(products), attributes_path=str(attributes))


def test_real_products_load_render_and_can_be_bought(excerpt_world):
  assert [p.asin for p in excerpt_world.products] == ["B06Y3VLDFB", "B08R3XSC65", "B07DRFDWVT", "B00BT1QVW0"]
  assert [p.price_tag for p in excerpt_world.products] == ["$877.8", "$100.0", "$12.99", "$100.0"]
  assert excerpt_world.by_asin["B07DRFDWVT"].options == {"color": ["*soft grey", "soft grey", "taupe"]}
  assert len(excerpt_world.goals) == 3  # only B07DRFDWVT has an instruction: one goal per colour
  env = WebShopEnv(excerpt_world)
  for product in excerpt_world.products:
    env.reset("0")
    results = env.step(f"search[{product.title}]")
    assert f"click[{product.asin.lower()}]" in results.admissible_actions
    item = env.step(f"click[{product.asin.lower()}]")
    assert f"[SEP] {product.title} [SEP] Price: {product.price_tag} [SEP] Rating: N.A. [SEP]" in item.observation
    done = env.step("click[buy now]")
    assert done.done and 0.0 <= done.info["score"] <= 1.0 and done.info["purchased_asin"] == product.asin
  # empty fields render as WebShop's parser leaves them: '' is no text node, ' ' an empty segment
  tea, curtain = excerpt_world.by_asin["B00BT1QVW0"], excerpt_world.by_asin["B07DRFDWVT"]
  for product, sub_page, ending in ((curtain, "description", "< Prev"), (tea, "features", "< Prev [SEP] ")):
    env.reset("0")
    env.step(f"search[{product.title}]")
    env.step(f"click[{product.asin.lower()}]")
    assert env.step(f"click[{sub_page}]").observation.endswith(ending)
  for index, goal in enumerate(excerpt_world.goals):
    env.reset(str(index))
    assert "color: " in goal.instruction_text and goal.attributes == ("machine washable", "living room")
    for action in env.hindsight().expert_actions:
      result = env.step(action)
    assert result.won and result.info["score"] == 1.0, (goal.goal_options, curtain.title)


# --- evaluation and settings ------------------------------------------------------------------------------
def test_summarize_episodes_reports_score_and_success_rate():
  summary = summarize_episodes([(1.0, True), (0.5, False), (0.0, False), (1.0, True)])
  assert summary == {"score": 62.5, "success_rate": 50.0, "episodes": 4}
  assert summarize_episodes([]) == {"score": 0.0, "success_rate": 0.0, "episodes": 0}


def test_paper_settings():
  assert (MAX_STEPS, HISTORY_LENGTH, TASKS_PER_BATCH, GROUP_SIZE) == (15, 2, 16, 8)
  assert (SUCCESS_REWARD, INVALID_PENALTY) == (10.0, 0.1)
  assert WebShopEnv.max_steps == 15
