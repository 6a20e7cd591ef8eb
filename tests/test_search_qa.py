"""Search-QA: answer normalisation, the BM25 retrieval server over loopback HTTP, the env, a rollout."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import threading

import httpx
import pytest
from shared_data import shared_path

from opid_jax.agent import parsing, rollout
from opid_jax.envs import retrieval_server
from opid_jax.envs.pool import EnvPool
from opid_jax.envs.search_qa import (
  INVALID_ACTION_FEEDBACK,
  RetrieverClient,
  SearchQAEnv,
  exact_match,
  format_passages,
  list_questions,
  normalize_answer,
  search_r1_action,
)

CORPUS = shared_path("search_qa", "corpus", "wiki18_sample_1000.jsonl")
NQ = shared_path("search_qa", "qa", "nq_test.jsonl")


@pytest.fixture(scope="module")
def retriever_url():
  server = retrieval_server.make_server(CORPUS, "127.0.0.1", 0)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  host, port = server.server_address[:2]
  yield f"http://{host}:{port}/retrieve"
  server.shutdown()
  server.server_close()


@pytest.fixture
def questions(tmp_path):
  rows = [
    {"id": "q1", "question": "Which company did Evan Morris lobby for?", "golden_answers": ["Genentech", "Roche"]},
    {"id": "q2", "question": "Who wrote The Hobbit?", "golden_answers": ["J. R. R. Tolkien"]},
  ]
  path = tmp_path / "mini_test.jsonl"
  path.write_text("".join(json.dumps(row) + "\n" for row in rows))
  return str(path)


def test_normalisation_and_exact_match():
  assert normalize_answer("  The  Eiffel-Tower!! ") == "eiffeltower"
  assert normalize_answer("An apple a day") == "apple day"
  assert exact_match("the Beatles.", ["Beatles", "The Rolling Stones"])
  assert exact_match("J.R.R. Tolkien", ["J. R. R. Tolkien"]) is False  # spacing survives
  assert not exact_match("Beatle", ["Beatles"])
  assert not exact_match("", ["x"])


@pytest.mark.parametrize(
  "response, action",
  [
    ("<think>x</think><answer>Cusco</answer> no, <answer>Lima</answer>", ("answer", "Cusco")),  # the first answer
    ("<search> capital of peru </search><answer>Lima</answer>", ("search", "capital of peru")),
    ("<answer>Lima</answer> or <search>q</search>", ("answer", "Lima")),
    # a later </search> keeps more of the turn, and Search-R1 scores the turn's last answer
    ("<answer>Cusco</answer> <answer>Lima</answer> <search>q</search>", ("answer", "Lima")),
    ("<answer>Cusco <search>q</search></answer>", ("search", "q")),  # the turn ends at </search>
    ("<answer>Lima", (None, "")),
  ],
)
def test_search_r1_reads_the_first_tag_pair_of_the_turn(response, action):
  assert search_r1_action(response) == action


def test_the_first_answer_of_a_turn_is_scored(questions):
  env = SearchQAEnv(questions, retriever_url="http://127.0.0.1:9/retrieve")  # answers never reach the retriever
  env.reset("q1")
  late = env.step("<answer>Pfizer</answer> no wait, <answer>Genentech</answer>")
  assert (late.info["answer"], late.reward, late.done) == ("Pfizer", 0.0, True)
  env.reset("q1")
  assert env.step("<answer>Genentech</answer> or maybe <answer>Pfizer</answer>").won
  parsed = parsing.parse_search_response("<think>x</think><answer>Pfizer</answer> no, <answer>Genentech</answer>")
  assert parsed.action == "<answer>Pfizer</answer>"  # what the env receives in a rollout


def test_tags_are_case_sensitive(questions):
  env = SearchQAEnv(questions, retriever_url="http://127.0.0.1:9/retrieve")
  env.reset("q1")
  for response in ("<Answer>Genentech</Answer>", "<ANSWER>Genentech</ANSWER>", "<answer>Genentech</Answer>"):
    assert search_r1_action(response) == (None, "")
    result = env.step(response)
    assert (result.observation, result.reward, result.done) == (INVALID_ACTION_FEEDBACK, 0.0, False)
    parsed = parsing.parse_search_response("<think>x</think>" + response)
    assert (parsed.action, parsed.valid) == ("", False)
  parsed = parsing.parse_search_response("<think>x</think><Search>q</Search><answer>Roche</answer>")
  assert (parsed.action, parsed.valid) == ("<answer>Roche</answer>", True)  # <Search> is plain text


def test_golden_answers_given_as_one_string(tmp_path):
  path = tmp_path / "one_test.jsonl"
  path.write_text(json.dumps({"id": "q", "question": "Capital of France?", "golden_answers": "Paris"}) + "\n")
  assert exact_match("paris", "Paris") and not exact_match("p", "Paris")
  env = SearchQAEnv(str(path), retriever_url="http://127.0.0.1:9/retrieve")
  env.reset("q")
  assert env.hindsight().gold_answers == ("Paris",)
  assert env.step("<answer>paris</answer>").won
  env.reset("q")
  assert not env.step("<answer>p</answer>").won  # not one of the characters of "Paris"


def test_passages_are_formatted_like_search_r1():
  docs = [
    {"id": "1", "contents": '"Evan Morris"\nEvan Morris was a lobbyist.'},
    {"id": "2", "contents": "Lima\nLima is the capital of Peru."},
  ]
  assert format_passages(docs) == (
    "<information>Doc 1(Title: Evan Morris) Evan Morris was a "
    "lobbyist.\nDoc 2(Title: Lima) Lima is the capital of Peru."
    "</information>"
  )


def test_server_round_trip_with_batched_queries_and_topk(retriever_url):
  queries = ["Evan Morris lobbyist Genentech", "the of and", "Nobel prize in physics"]
  reply = httpx.post(retriever_url, json={"queries": queries, "topk": 5, "return_scores": True})
  assert reply.status_code == 200
  result = reply.json()["result"]
  assert [len(hits) for hits in result] == [5, 5, 5]
  top = result[0][0]
  assert top["document"]["id"] == "0" and top["document"]["contents"].startswith('"Evan Morris"')
  scores = [hit["score"] for hit in result[0]]
  assert scores == sorted(scores, reverse=True) and scores[0] > 0
  bare = httpx.post(retriever_url, json={"queries": queries[:1]}).json()["result"]
  assert len(bare[0]) == 3 and bare[0][0]["id"] == "0"  # default topk 3, documents without scores
  assert httpx.post(retriever_url, json={"queries": []}).json() == {"result": []}
  health = httpx.get(retriever_url.replace("/retrieve", "/health")).json()
  assert health == {"status": "ok", "documents": 1000}


@pytest.mark.parametrize(
  "body, status, message",
  [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"topk": 3}', 400, "'queries'"),
    (b'{"queries": "one string"}', 400, "'queries'"),
    (b'{"queries": ["a", 3]}', 400, "'queries'"),
    (b'{"queries": ["a"], "topk": 0}', 400, "'topk'"),
    (b'{"queries": ["a"], "topk": "3"}', 400, "'topk'"),
    (b'{"queries": ["a"], "return_scores": "yes"}', 400, "'return_scores'"),
    (b"\xff\xfe", 400, "not valid JSON"),
  ],
)
def test_malformed_requests_get_4xx_with_a_message(retriever_url, body, status, message):
  reply = httpx.post(retriever_url, content=body, headers={"Content-Type": "application/json"})
  assert reply.status_code == status
  assert message in reply.json()["error"]


def test_wrong_paths_and_methods(retriever_url):
  assert httpx.post(retriever_url.replace("/retrieve", "/search"), json={}).status_code == 404
  get = httpx.get(retriever_url)
  assert get.status_code == 405 and "POST" in get.json()["error"]
  huge = b'{"queries": ["' + b"a" * (retrieval_server.MAX_BODY_BYTES + 1) + b'"]}'
  assert httpx.post(retriever_url, content=huge).status_code == 413


def test_server_command_line(tmp_path):
  corpus = tmp_path / "corpus.jsonl"
  corpus.write_text(
    '{"id": "a", "contents": "Lima\\nCapital of Peru."}\n{"id": "b", "contents": "Oslo\\nCapital of Norway."}\n'
  )
  process = subprocess.Popen(
    [sys.executable, "-m", "opid_jax.envs.retrieval_server", f"--corpus={corpus}", "--port=0"],
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    line = process.stderr.readline()
    assert "127.0.0.1" in line
    url = line.split()[-1]
    hits = httpx.post(url, json={"queries": ["norway"], "topk": 1, "return_scores": True}, timeout=10).json()["result"]
    assert hits[0][0]["document"]["id"] == "b"
  finally:
    process.terminate()
    process.wait(timeout=10)


def test_retriever_client_reports_failures(retriever_url):
  client = RetrieverClient(retriever_url, topk=2)
  assert [len(hits) for hits in client.retrieve(["lobbyist", "capital"])] == [2, 2]
  rejected = RetrieverClient(retriever_url.replace("/retrieve", "/nowhere"), attempts=3)
  with pytest.raises(RuntimeError, match="answered 404"):
    rejected.retrieve(["x"])  # a 4xx is not retried
  with pytest.raises(RuntimeError, match="unreachable"):
    RetrieverClient("http://127.0.0.1:9/retrieve", attempts=1, timeout_s=2).retrieve(["x"])
  client.close()


def test_env_plays_a_scripted_episode_to_a_correct_answer(retriever_url, questions):
  env = SearchQAEnv(questions, retriever_url=retriever_url)
  assert list_questions(questions) == ["q1", "q2"]
  reset = env.reset("q1")
  assert (reset.task, reset.task_type) == ("Which company did Evan Morris lobby for?", "mini")
  assert reset.observation == "Question: Which company did Evan Morris lobby for?"
  assert env.hindsight().gold_answers == ("Genentech", "Roche")

  bad = env.step("I think it is Roche")
  assert (bad.observation, bad.done, bad.reward) == (INVALID_ACTION_FEEDBACK, False, 0.0)
  found = env.step("<search>Evan Morris lobbyist</search>")
  assert found.observation.startswith("<information>Doc 1(Title: Evan Morris) Evan Morris")
  assert found.observation.count("\nDoc ") == 2 and "Genentech" in found.observation
  assert not found.done
  answer = env.step("<answer>genentech.</answer>")
  assert (answer.reward, answer.done, answer.won) == (1.0, True, True)

  env.reset("q2")
  for turn in range(3):
    assert not env.step("<search>hobbit</search>").done
  last = env.step("<search>tolkien</search>")
  assert last.done and last.info["truncated"] and last.reward == 0.0
  env.reset("q2")
  wrong = env.step("<answer>C. S. Lewis</answer>")
  assert wrong.done and not wrong.won and wrong.reward == 0.0
  env.close()


def test_nq_sample_loads(retriever_url):
  env = SearchQAEnv(NQ, retriever_url=retriever_url)
  task_ids = list_questions(NQ)
  assert len(task_ids) == 1000 and task_ids[0] == "test_3283"
  reset = env.reset(task_ids[0])
  assert reset.task == "who told the story of the prodigal son" and reset.task_type == "nq"
  assert env.hindsight().gold_answers == ("Jesus Christ",)


def test_search_rollout_through_the_pool(retriever_url, questions, chatml_tokenizer):
  tokenizer = chatml_tokenizer

  def policy(prompt_ids):
    out = []
    for ids in prompt_ids:
      prompt = tokenizer.decode(ids)
      company = "Genentech" if "Genentech" in prompt.split("current observation is:")[-1] else ""
      text = (
        f"<think>Found it.</think><answer>{company}</answer>"
        if company
        else "<think>Search first.</think><search>Evan Morris lobbyist</search>"
      )
      response = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
      out.append((response, [-1.0] * len(response)))
    return out

  factory = functools.partial(SearchQAEnv, questions, retriever_url=retriever_url)
  with EnvPool(factory, num_envs=2, num_workers=1) as pool:
    trajectories = rollout.run_groups(pool, policy, tokenizer, ["q1"], group_size=2, agent=rollout.search_agent())
  for traj in trajectories:
    assert traj.won and traj.episode_return == 1.0 and traj.length == 2
    assert [s.action for s in traj.steps] == ["<search>Evan Morris lobbyist</search>", "<answer>Genentech</answer>"]
    assert all(s.valid for s in traj.steps)
    assert traj.hindsight.gold_answers == ("Genentech", "Roche")
    assert "Your question: Which company did Evan Morris lobby for?" in traj.steps[1].prompt_text
    assert "Action 1: '<search>Evan Morris lobbyist</search>'" in traj.steps[1].prompt_text
