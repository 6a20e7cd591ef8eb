"""Score a response after a prompt: prints {"tokens": [...], "logprobs": [...]} as one JSON line.

  python -m opid_jax.score --model=PATH --prompt=TEXT --response=TEXT [--chat]

The prompt is used verbatim unless --chat wraps it as one user message with the generation prompt; the
response is tokenized without special tokens.
"""

import json

from absl import app, flags

from opid_jax.cli import define_attention_flag
from opid_jax.errors import UserError, exit_on_user_error

flags.DEFINE_string("model", None, "HF folder, hub id, or .gguf file.", required=True)
flags.DEFINE_string("prompt", None, "Prompt text.", required=True)
flags.DEFINE_string("response", None, "Response text to score.", required=True)
flags.DEFINE_bool("chat", False, "Wrap the prompt as one user message with the chat template.")
flags.DEFINE_float("temperature", 1.0, "Divide logits by this before the log-softmax.")
flags.DEFINE_string("dtype", "float32", "Compute dtype (float32 or bfloat16).")
flags.DEFINE_integer("max_prompt_tokens", 8192, "Longest prompt accepted (longer ones are refused).")
flags.DEFINE_bool("truncate_left", False, "Keep the last max_prompt_tokens tokens of a longer prompt instead.")
define_attention_flag()
FLAGS = flags.FLAGS


@exit_on_user_error
def main(argv):
  del argv
  from opid_jax.batching import padding, prompt_length
  from opid_jax.model import loading, tokenizer
  from opid_jax.rl.scoring import Scorer

  loaded = loading.load(FLAGS.model, dtype=FLAGS.dtype, attention=FLAGS.attention)
  side = "left" if FLAGS.truncate_left else "error"
  prompt = prompt_length.fit(
    tokenizer.prompt_ids(loaded.tokenizer, FLAGS.prompt, FLAGS.chat), FLAGS.max_prompt_tokens, side, prompt_length.CLI
  )
  response = tokenizer.encode(loaded.tokenizer, FLAGS.response)
  if not response:
    raise UserError("the response is empty after tokenization")
  scorer = Scorer(
    loaded.model,
    loaded.pad_id,
    micro_batch=1,
    prompt_buckets=padding.buckets_up_to(FLAGS.max_prompt_tokens),
    truncate_left=FLAGS.truncate_left,
  )
  out = scorer.score([prompt], [response], temperature=FLAGS.temperature)
  print(json.dumps({"tokens": response, "logprobs": [float(x) for x in out.logprobs[0]]}))


if __name__ == "__main__":
  app.run(main)
