"""An OpenAI-compatible server over the JAX sampler: serves trained policies, or acts as an analyzer endpoint.

  python -m opid_jax.serve --model=PATH [--host=127.0.0.1] [--port=8000] [--served_model_name=NAME] [--max_batch=32]

Endpoints: POST /v1/chat/completions (messages with string content or text parts, max_tokens /
max_completion_tokens, temperature, top_p, top_k, n, stream, stream_options.include_usage; seed and
response_format are ignored), POST /v1/completions (a raw prompt, no chat template: a string or token ids;
max_tokens defaults to 16; echo, suffix, stop and logprobs are refused), GET /v1/models, GET /v1/stats
(batching counters). "stream": true answers with server-sent events, as OpenAI does. With --engine=static
concurrent requests are gathered into batched sampler calls; with --engine=continuous a request joins the running
slots at the next device call and its tokens stream out after every call. Loopback only unless --host says
otherwise.

Errors are OpenAI error objects: a request naming a model other than --served_model_name gets 404
model_not_found; a prompt over --max_prompt_tokens gets 400 context_length_exceeded (with --truncate_left it is
cut on the left instead); a body over --max_body_bytes gets 413 before any of it is read.
"""

from __future__ import annotations

from absl import app, flags

from opid_jax.cli import define_attention_flag, parse_flags_or_exit, quiet_libraries
from opid_jax.errors import UserError, exit_on_user_error
from opid_jax.generation.server import DEFAULT_MAX_BODY_BYTES, build_server, served_name

flags.DEFINE_string("model", None, "HF folder, hub id, or .gguf file.", required=True)
flags.DEFINE_string(
  "served_model_name",
  None,
  "Model id in /v1/models and in answers (default: the folder's or file's name, or the hub id).",
)
flags.DEFINE_string("host", "127.0.0.1", "Address to bind (loopback by default).")
flags.DEFINE_integer("port", 8000, "Port (0 picks a free one and prints it).")
flags.DEFINE_integer("max_batch", 32, "Most requests per sampler call.")
flags.DEFINE_integer(
  "max_prompt_tokens", 4096, "Longest prompt read; a longer one gets HTTP 400 (context_length_exceeded)."
)
flags.DEFINE_bool("truncate_left", False, "Cut a prompt over --max_prompt_tokens on the left instead of answering 400.")
flags.DEFINE_integer("default_max_tokens", 512, "max_tokens of a chat completion that gives none.")
flags.DEFINE_integer("max_body_bytes", DEFAULT_MAX_BODY_BYTES, "Largest request body; a larger one gets HTTP 413.")
flags.DEFINE_enum(
  "engine",
  "static",
  ["static", "continuous"],
  "static: concurrent requests gathered into batched sampler calls; continuous: requests join the running slots at "
  "once and stream out after every device call.",
)
flags.DEFINE_integer("slots", 32, "continuous: sequences decoded side by side.")
flags.DEFINE_integer("decode_steps", 8, "continuous: tokens per slot per device call.")
flags.DEFINE_integer(
  "max_new_tokens", 1024, "continuous: the largest max_tokens served (each slot holds --max_prompt_tokens + this)."
)
flags.DEFINE_string("dtype", "float32", "Compute dtype.")
define_attention_flag()
FLAGS = flags.FLAGS


@exit_on_user_error
def main(argv):
  del argv
  quiet_libraries()
  try:
    server, backend = build_server(
      FLAGS.model,
      FLAGS.host,
      FLAGS.port,
      max_batch=FLAGS.max_batch,
      max_prompt_tokens=FLAGS.max_prompt_tokens,
      default_max_tokens=FLAGS.default_max_tokens,
      dtype=FLAGS.dtype,
      attention=FLAGS.attention,
      truncation_side="left" if FLAGS.truncate_left else "error",
      served_model_name=FLAGS.served_model_name,
      max_body_bytes=FLAGS.max_body_bytes,
      engine=FLAGS.engine,
      slots=FLAGS.slots,
      decode_steps=FLAGS.decode_steps,
      max_new_tokens=FLAGS.max_new_tokens,
    )
  except OSError as e:
    raise UserError(f"cannot listen on {FLAGS.host}:{FLAGS.port} ({e.strerror})") from None
  name = FLAGS.served_model_name or served_name(FLAGS.model)
  print(f"serving {name} ({FLAGS.model}) on http://{FLAGS.host}:{server.server_address[1]}/v1", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()
    backend.close()


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags_or_exit)
