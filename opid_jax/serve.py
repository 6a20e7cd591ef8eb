"""An OpenAI-compatible server over the JAX sampler: serves trained policies, or acts as an analyzer endpoint.

  python -m opid_jax.serve --model=PATH [--host=127.0.0.1] [--port=8000] [--max_batch=32]

Endpoints: POST /v1/chat/completions (messages, max_tokens / max_completion_tokens, temperature, top_p,
top_k, n, seed is ignored; no streaming), GET /v1/models, GET /v1/stats (batching counters).
Concurrent requests are gathered into batched sampler calls. Loopback only unless --host says otherwise.
A prompt over --max_prompt_tokens is cut on the left, or, with --notruncate_left, answered with HTTP 400
(code context_length_exceeded).
"""

from __future__ import annotations

from absl import app, flags

from opid_jax.cli import define_attention_flag, parse_flags_or_exit, quiet_libraries
from opid_jax.errors import UserError, exit_on_user_error
from opid_jax.generation.server import build_server

flags.DEFINE_string("model", None, "HF folder, hub id, or .gguf file.", required=True)
flags.DEFINE_string("host", "127.0.0.1", "Address to bind (loopback by default).")
flags.DEFINE_integer("port", 8000, "Port (0 picks a free one and prints it).")
flags.DEFINE_integer("max_batch", 32, "Most requests per sampler call.")
flags.DEFINE_integer("max_prompt_tokens", 4096, "Longest prompt read; longer ones are cut on the left.")
flags.DEFINE_bool("truncate_left", True, "Cut longer prompts on the left (--notruncate_left: answer HTTP 400).")
flags.DEFINE_integer("default_max_tokens", 512, "max_tokens when a request gives none.")
flags.DEFINE_string("dtype", "float32", "Compute dtype.")
define_attention_flag()
FLAGS = flags.FLAGS


@exit_on_user_error
def main(argv):
  del argv
  quiet_libraries()
  try:
    server, batcher = build_server(
      FLAGS.model,
      FLAGS.host,
      FLAGS.port,
      max_batch=FLAGS.max_batch,
      max_prompt_tokens=FLAGS.max_prompt_tokens,
      default_max_tokens=FLAGS.default_max_tokens,
      dtype=FLAGS.dtype,
      attention=FLAGS.attention,
      truncation_side="left" if FLAGS.truncate_left else "error",
    )
  except OSError as e:
    raise UserError(f"cannot listen on {FLAGS.host}:{FLAGS.port} ({e.strerror})") from None
  print(f"serving {FLAGS.model} on http://{FLAGS.host}:{server.server_address[1]}/v1", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()
    batcher.close()


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags_or_exit)
