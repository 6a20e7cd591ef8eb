"""Generate a continuation with any checkpoint: prints only the generated text.

  python -m opid_jax.generate --model=PATH --prompt=TEXT [--chat] [--greedy] [--max_new_tokens=N]
      [--temperature=T] [--seed=S]

PATH is an HF folder, a hub id, or a .gguf file.
"""

from absl import app, flags

from opid_jax.cli import define_attention_flag
from opid_jax.errors import exit_on_user_error

flags.DEFINE_string("model", None, "HF folder, hub id, or .gguf file.", required=True)
flags.DEFINE_string("prompt", None, "Prompt text (used verbatim unless --chat).", required=True)
flags.DEFINE_bool("chat", False, "Wrap the prompt as one user message with the chat template.")
flags.DEFINE_bool("greedy", False, "Greedy decoding (ignores temperature, top-p, top-k).")
flags.DEFINE_integer("max_new_tokens", 128, "Most tokens to generate.")
flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass.")
flags.DEFINE_integer("top_k", 0, "Top-k filter (0: off).")
flags.DEFINE_integer("seed", 0, "PRNG seed.")
flags.DEFINE_string("dtype", "float32", "Compute dtype (float32 or bfloat16).")
flags.DEFINE_integer("max_prompt_tokens", 8192, "Longest prompt accepted (longer ones are refused).")
flags.DEFINE_bool("truncate_left", False, "Keep the last max_prompt_tokens tokens of a longer prompt instead.")
define_attention_flag()
FLAGS = flags.FLAGS


@exit_on_user_error
def main(argv):
  del argv
  from opid_jax.batching import padding, prompt_length
  from opid_jax.generation.sampler import Sampler, SamplingParams
  from opid_jax.model import loading, tokenizer

  loaded = loading.load(FLAGS.model, dtype=FLAGS.dtype, attention=FLAGS.attention)
  side = "left" if FLAGS.truncate_left else "error"
  ids = prompt_length.fit(
    tokenizer.prompt_ids(loaded.tokenizer, FLAGS.prompt, FLAGS.chat), FLAGS.max_prompt_tokens, side, prompt_length.CLI
  )
  sampler = Sampler(
    loaded.model,
    loaded.stop_ids,
    loaded.pad_id,
    batch_buckets=(1,),
    prompt_buckets=padding.buckets_up_to(FLAGS.max_prompt_tokens),
    truncate_left=FLAGS.truncate_left,
  )
  params = SamplingParams(
    temperature=0.0 if FLAGS.greedy else FLAGS.temperature,
    top_p=FLAGS.top_p,
    top_k=FLAGS.top_k,
    max_new_tokens=FLAGS.max_new_tokens,
  )
  out = sampler.generate([ids], params, key=FLAGS.seed)
  print(loaded.tokenizer.decode(out.tokens[0], skip_special_tokens=True))


if __name__ == "__main__":
  app.run(main)
