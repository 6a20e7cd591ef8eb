"""Search-augmented QA with the paper's settings: 128 questions x 8 rollouts, 4 turns, history 4.

Needs a Search-R1-compatible retriever at env.retriever_url (e.g. `python -m opid_jax.envs.retrieval_server
--corpus=FILE --port=8000`, or an e5 + wiki-18 server) and question files in jsonl.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.model.path = "Qwen/Qwen2.5-3B-Instruct"
  c.rollout.update(
    tasks_per_batch=128,
    group_size=8,
    max_steps=4,
    history_window=4,
    max_prompt_tokens=4096,
    max_new_tokens=512,
    truncation_side="left",
    temperature=1.0,
    eval_temperature=0.4,
  )
  c.env.update(
    name="search_qa",
    train_questions="data/search_qa/train.jsonl",
    eval_questions="data/search_qa/nq_test.jsonl",
    retriever_url="http://127.0.0.1:8000/retrieve",
    topk=3,
    num_workers=8,
  )
  c.analyzer.update(backend="openai", max_step_skills=5, max_completion_tokens=4096)
  c.opid.update(lambda_skill=0.001, routing="critical_first", invalid_penalty=0.01)
  c.ppo.update(kl_coef=0.001, mini_batch_size=512, micro_batch_size=16, entropy_coef=0.0, dual_clip=3.0)
  c.optim.update(lr=1e-6)
  c.train.update(steps=200, eval_every=20, eval_tasks=500, prompt_buckets=(512, 1024, 2048, 4096))
  return c
