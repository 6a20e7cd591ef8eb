"""The CPU-scale OPID study on real ALFWorld games (issue #9): SFT warm start, then GRPO, OPID and the three routing
ablations from the same start, several seeds, evaluated without skills on the full valid_seen and valid_unseen
lists; results written as a markdown report with learning curves.

  python benchmarks/cpu_study.py                       # every stage, skipping what is already done
  python benchmarks/cpu_study.py --stage=runs --variants=grpo,opid --seeds=0
  python benchmarks/cpu_study.py --stage=report
  python benchmarks/cpu_study.py --short --root=/tmp/study --data_dir=...   # a few-minute version (CI)

Stages (each resumable; a finished piece is skipped, an interrupted one resumes from its checkpoint):
  sft      behaviour cloning of the small from-scratch policy (configs/sft_alfworld_small.py) -> ROOT/sft/policy
  probe    the skill-signal probe (opid_jax.probe_skills) on the random initial and the SFT policy (and
           SmolLM2-135M-Instruct, a reference instruct model, when installed) -> ROOT/probe_*.json
  tune     on valid_train only: the lr from short GRPO runs, then lambda_skill from short OPID runs -> ROOT/tune/*
  initial  the SFT policy's evaluation (greedy, so every variant shares this step-0 point) -> ROOT/initial
  runs     every (variant, seed) with the tuned settings -> ROOT/runs/<variant>_s<seed>
  report   REPORT (default results/cpu_study.md) and PNG curves beside it
Every RL run is `python -m opid_jax.train --config=configs/alfworld_small.py` with overrides, in its own workdir.
SIGTERM stops the study gracefully: the running piece saves its finished iteration, nothing after it starts.

Every finished piece is also copied, without checkpoints, into STORE (default results/cpu_study/, committed with
the repository; see study_store.py), and a new invocation first copies the store back into ROOT: a study spread
over several machines loses nothing it finished. `--until=TIME` starts no piece that would not finish by then
(estimated from `--run_minutes`), so a study run in fixed time slots never leaves a half-done run behind.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT_DIR)

import study_store  # noqa: E402

from configs import alfworld_small  # noqa: E402
from opid_jax.training import curves  # noqa: E402

VARIANTS = {  # name -> config overrides on top of the tuned settings
  "grpo": {"opid.lambda_skill": 0.0},
  "opid": {"opid.routing": "critical_first"},
  "episode_only": {"opid.routing": "episode_only"},
  "step_only": {"opid.routing": "step_only"},
  "superimpose": {"opid.routing": "superimpose"},
}
SPLITS = ("valid_seen", "valid_unseen")
TUNE_LAMBDAS = (0.01, 0.1)
TUNE_LRS = (3e-5, 1e-4)
SFT_PHASES = (300, 1000)  # SFT length per phase (see Study.sft)
RL_CONFIG = "configs/alfworld_small.py"
RL_ITERATIONS = alfworld_small.get_config().train.steps  # a tuning run of N iterations: N/RL_ITERATIONS of a run
SFT_CONFIG = "configs/sft_alfworld_small.py"

# The short version: a tiny policy, one RL iteration, a few games per split (minutes; for CI).
SHORT_SFT = {
  "small_policy.vocab_size": 400,
  "small_policy.hidden_size": 32,
  "small_policy.num_layers": 1,
  "small_policy.num_heads": 2,
  "small_policy.num_kv_heads": 1,
  "small_policy.head_dim": 16,
  "small_policy.intermediate_size": 64,
  "data.num_games": 4,
  "data.heldout_games": 1,
  "data.max_prompt_tokens": 2048,
  "train.steps": 2,
  "train.batch_size": 4,
  "train.micro_batch_size": 2,
  "train.eval_every": 2,
  "train.prompt_buckets": "(512,1024,2048)",
  "train.response_buckets": "(32,64)",
  "checkpoint.async_save": False,
}
SHORT_RL = {
  "rollout.tasks_per_batch": 1,
  "rollout.group_size": 2,
  "rollout.max_steps": 2,
  "rollout.max_prompt_tokens": 2048,
  "train.steps": 1,
  "train.eval_every": 1,
  "train.eval_tasks": 2,
  "train.prompt_buckets": "(512,1024,2048)",
  "ppo.mini_batch_size": 8,
  "ppo.micro_batch_size": 4,
  "train.score_micro_batch": 4,
  "checkpoint.async_save": False,
}


def run_piece(variant: str, seed: int) -> str:
  return os.path.join("runs", f"{variant}_s{seed}")


def overrides_to_flags(overrides: dict) -> list[str]:
  return [f"--config.{k}={v}" for k, v in overrides.items()]


_CHILD: dict = {"process": None, "stop_requested": False}


def _stop_gracefully(signum, frame) -> None:
  """SIGTERM: pass it on to the running piece (a trainer saves its finished iteration and exits), start nothing
  after it. The same command later resumes where it stopped."""
  _CHILD["stop_requested"] = True
  if _CHILD["process"] is not None and _CHILD["process"].poll() is None:
    _CHILD["process"].send_signal(signal.SIGTERM)


def run_module(
  module: str,
  config: str,
  workdir: str,
  overrides: dict,
  extra: list[str] = (),
  until: datetime.datetime | None = None,
  minutes: float = 0.0,
  code_tree: str = ROOT_DIR,
) -> float:
  """Runs `python -m module` to the end (it resumes by itself) in CODE_TREE, whose package and configs it uses; its
  output goes to WORKDIR/log.txt. With `until`, a piece estimated to take `minutes` is not started when it would
  end after that time."""
  if _CHILD["stop_requested"]:  # the stop came between two pieces: start nothing
    raise SystemExit(f"stopped on request before {workdir} started")
  if until is not None and datetime.datetime.now() + datetime.timedelta(minutes=minutes) > until:
    raise SystemExit(f"stopped: {workdir} (~{minutes:g} min) would not finish by --until={until.isoformat()}")
  os.makedirs(workdir, exist_ok=True)
  cmd = [
    sys.executable,
    "-m",
    module,
    f"--config={config}",
    f"--workdir={workdir}",
    *overrides_to_flags(overrides),
    *extra,
  ]
  start = time.time()
  with open(os.path.join(workdir, "log.txt"), "a") as log:
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    _CHILD["process"] = subprocess.Popen(cmd, cwd=code_tree, stdout=log, stderr=subprocess.STDOUT)
    returncode = _CHILD["process"].wait()
    _CHILD["process"] = None
  if _CHILD["stop_requested"]:
    raise SystemExit(f"stopped on request: {workdir} keeps its last saved iteration; the same command resumes")
  if returncode != 0:
    raise SystemExit(f"error: {module} failed in {workdir} (exit {returncode}); see {workdir}/log.txt")
  return time.time() - start


def require_finished(workdir: str) -> None:
  """A trainer stopped on its own (e.g. a SIGTERM sent to it, not to the study) exits cleanly before its last
  iteration: stop the study rather than go on as if the run were done."""
  if not os.path.exists(os.path.join(workdir, "summary.md")):
    raise SystemExit(f"stopped: {workdir} ended before its last iteration (it resumes from its last saved one)")


class Study:
  def __init__(self, args):
    self.args = args
    self.root = os.path.abspath(args.root)
    self.short = args.short
    self.data = {"env.data_dir": args.data_dir, "env.train_split": args.train_split}
    self.sft_phases = (SHORT_SFT["train.steps"],) if args.short else SFT_PHASES
    self.store = args.store
    for piece in study_store.restore(self.store, self.root):
      print(f"restored {piece} from {self.store}", flush=True)

  def run(
    self, module: str, config: str, piece: str, overrides: dict, extra: list[str] = (), minutes: float = 0.0
  ) -> float:
    """One piece of the study in ROOT/piece (see run_module)."""
    return run_module(module, config, os.path.join(self.root, piece), overrides, extra, self.args.until, minutes)

  def record(self, piece: str) -> None:
    study_store.record(self.root, self.store, piece)

  # --- paths -------------------------------------------------------------------------------------------------
  @property
  def policy(self) -> str:
    return os.path.join(self.root, "sft", "policy")

  def run_dir(self, variant: str, seed: int) -> str:
    return os.path.join(self.root, run_piece(variant, seed))

  def tune_dir(self, name: str) -> str:
    return os.path.join(self.root, "tune", name)

  # --- stages ------------------------------------------------------------------------------------------------
  def sft(self) -> None:
    """SFT in phases: each phase resumes the previous one's checkpoint with a longer `train.steps` (the cosine
    schedule is re-stretched over the new length from there on, a warm restart)."""
    phases = self.sft_phases
    summary = os.path.join(self.root, "sft", "sft_summary.json")
    for steps in phases:
      if os.path.exists(summary) and json.load(open(summary))["steps"] >= steps:
        continue
      overrides = {
        "data.data_dir": self.args.data_dir,
        "data.split": self.args.sft_split,
        "data.cache": os.path.join(self.root, "sft", "expert_steps.jsonl"),
        **(SHORT_SFT if self.short else {}),
        "train.steps": steps,
      }
      seconds = self.run("opid_jax.sft", SFT_CONFIG, "sft", overrides)
      print(f"sft to step {steps}: {seconds:.0f} s", flush=True)
    self.record("sft")

  def rl_overrides(self, seed: int, lr: float, lam: float) -> dict:
    return {
      **self.data,
      "model.path": self.policy,
      "train.seed": seed,
      "optim.lr": lr,
      "opid.lambda_skill": lam,
      **(SHORT_RL if self.short else {}),
    }

  def _tune_run(self, variant: str, lr: float, lam: float, run_missing: bool) -> str:
    name = f"{variant}_lr{lr:g}_lam{lam:g}"
    workdir = self.tune_dir(name)
    if run_missing and not os.path.exists(os.path.join(workdir, "summary.md")):
      overrides = {
        **self.rl_overrides(0, lr, lam),
        **VARIANTS[variant],
        "opid.lambda_skill": lam,
        "env.eval_split": "valid_train",
        "train.steps": self.args.tune_steps,
        "train.eval_every": self.args.tune_steps,
        "train.eval_tasks": self.args.tune_eval_tasks,
      }
      seconds = self.run(
        "opid_jax.train",
        RL_CONFIG,
        os.path.join("tune", name),
        overrides,
        minutes=self.args.run_minutes * self.args.tune_steps / RL_ITERATIONS,
      )
      require_finished(workdir)
      self.record(os.path.join("tune", name))
      print(f"tune {name}: {seconds:.0f} s", flush=True)
    return name

  def _tune_score(self, name: str) -> float:
    if not os.path.exists(os.path.join(self.tune_dir(name), "summary.md")):
      return float("-inf")
    evals = [r["eval/success"] for r in curves.read_run(self.tune_dir(name)) if "eval/success" in r]
    return evals[-1] if evals else float("-inf")

  def tune(self) -> None:
    """The learning rate from GRPO runs (so the baseline gets its best lr), then lambda_skill from OPID runs at
    that lr; both judged by the final valid_train success (ties: the first, i.e. smaller, value)."""
    if not self.short:
      self.tuned()

  def tuned(self, run_missing: bool = True) -> tuple[float, float, dict]:
    """(lr, lambda_skill, {tuning run: valid_train success}); runs the missing tuning runs unless told not to."""
    if self.short:
      return 1e-5, 0.05, {}
    scores = {}
    for lr in TUNE_LRS:
      name = self._tune_run("grpo", lr, 0.0, run_missing)
      scores[name] = self._tune_score(name)
    lr = max(TUNE_LRS, key=lambda v: scores[f"grpo_lr{v:g}_lam0"])
    for lam in TUNE_LAMBDAS:
      name = self._tune_run("opid", lr, lam, run_missing)
      scores[name] = self._tune_score(name)
    lam = max(TUNE_LAMBDAS, key=lambda v: scores[f"opid_lr{lr:g}_lam{v:g}"])
    return lr, lam, {k: v for k, v in scores.items() if v != float("-inf")}

  def probe(self) -> None:
    """The skill-signal probe on the random initial policy, the SFT policy and, as a reference instruct model,
    SmolLM2-135M-Instruct when its GGUF is installed (ROOT/probe_<name>.json)."""
    from configs.demo_smollm2 import smollm2_gguf

    models = {name: os.path.join(self.root, "sft", name) for name in ("init_policy", "policy")}
    reference = "" if self.short else smollm2_gguf()
    if reference:
      models["smollm2"] = reference
    for name, model in models.items():
      out = os.path.join(self.root, f"probe_{name}.json")
      if os.path.exists(out):
        continue
      cmd = [
        sys.executable,
        "-m",
        "opid_jax.probe_skills",
        f"--model={model}",
        f"--games={self.args.data_dir}",
        f"--n={2 if self.short else self.args.probe_games}",
        "--split=valid_seen",
        f"--json={out}",
      ]
      done = subprocess.run(cmd, cwd=ROOT_DIR, capture_output=True, text=True)
      if done.returncode != 0:
        raise SystemExit(f"error: probe_skills failed on {name}: {done.stderr.strip().splitlines()[-1:]}")
      self.record(os.path.basename(out))
      print(done.stdout, flush=True)

  def initial(self) -> None:
    workdir = os.path.join(self.root, "initial")
    if os.path.exists(os.path.join(workdir, "eval.json")):
      return
    overrides = {**self.data, "model.path": self.policy, **(SHORT_RL if self.short else {})}
    num_tasks = SHORT_RL["train.eval_tasks"] if self.short else 0
    seconds = self.run(
      "opid_jax.evaluate",
      RL_CONFIG,
      "initial",
      overrides,
      [f"--num_tasks={num_tasks}"],
      minutes=self.args.run_minutes / 2,
    )
    name = "eval_" + "+".join(SPLITS)
    os.replace(os.path.join(workdir, name + ".json"), os.path.join(workdir, "eval.json"))
    self.record("initial")
    print(f"initial evaluation: {seconds:.0f} s", flush=True)

  def runs(self) -> None:
    lr, lam, _ = self.tuned()
    for seed in self.args.seeds:
      for variant in self.args.variants:
        workdir = self.run_dir(variant, seed)
        if os.path.exists(os.path.join(workdir, "summary.md")):
          continue
        overrides = {**self.rl_overrides(seed, lr, lam), **VARIANTS[variant]}
        seconds = self.run(
          "opid_jax.train", RL_CONFIG, run_piece(variant, seed), overrides, minutes=self.args.run_minutes
        )
        require_finished(workdir)
        self.record(run_piece(variant, seed))
        print(f"run {variant} seed {seed}: {seconds:.0f} s", flush=True)

  def report(self) -> str:
    from study_report import write_report

    lr, lam, tune_scores = self.tuned(run_missing=False)
    return write_report(self, lr, lam, tune_scores)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--root", default="runs/cpu_study")
  p.add_argument("--stage", default="all", choices=("all", "sft", "probe", "tune", "initial", "runs", "report"))
  p.add_argument("--probe_games", type=int, default=20)
  p.add_argument("--variants", default=",".join(VARIANTS))
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--data_dir", default="data/alfworld")
  p.add_argument("--sft_split", default="train")
  p.add_argument("--train_split", default="train")
  p.add_argument("--tune_steps", type=int, default=6)
  p.add_argument("--tune_eval_tasks", type=int, default=50)
  p.add_argument("--report", default="results/cpu_study.md")
  p.add_argument(
    "--store",
    default=None,
    help="folder of the finished pieces' records, restored into ROOT first (default results/cpu_study; "
    "none with --short); '' for none",
  )
  p.add_argument("--until", default="", help="local ISO time (2026-12-01T22:00): start no piece that would end later")
  p.add_argument(
    "--run_minutes",
    type=float,
    default=35.0,
    help="estimated minutes of one RL run with its evaluation (tuning runs and the initial "
    "evaluation are estimated from it)",
  )
  p.add_argument("--short", action="store_true", help="a few-minute version: tiny policy, one iteration (CI)")
  return resolve_common_args(p, p.parse_args(argv), VARIANTS, "results/cpu_study")


def resolve_common_args(p, args, variants, default_store: str):
  """What both study scripts' arguments share: --variants and --seeds as lists, the store (none with --short
  unless given), --until as a time, the data dir as an absolute path that exists."""
  args.variants = [v for v in args.variants.split(",") if v]
  unknown = [v for v in args.variants if v not in variants]
  if unknown:
    p.error(f"unknown variants {unknown}; choose from {list(variants)}")
  args.seeds = [int(s) for s in args.seeds.split(",") if s]
  if args.store is None:
    args.store = "" if args.short else default_store
  args.store = os.path.abspath(args.store) if args.store else ""
  try:
    args.until = datetime.datetime.fromisoformat(args.until) if args.until else None
  except ValueError:
    p.error(f"--until={args.until!r} is not an ISO time like 2026-12-01T22:00")
  args.data_dir = os.path.abspath(args.data_dir)
  if args.stage != "report" and not os.path.isdir(args.data_dir):  # the report reads only the store
    p.error(f"ALFWorld data not found at {args.data_dir} (run `make data`)")
  return args


def main(argv=None) -> None:
  run_stages(Study(parse_args(argv)), ("sft", "probe", "tune", "initial", "runs", "report"))


def run_stages(study, every: tuple[str, ...]) -> None:
  """Runs --stage (all: every stage in order), each a method of the study; SIGTERM stops after the running piece."""
  signal.signal(signal.SIGTERM, _stop_gracefully)
  for stage in every if study.args.stage == "all" else (study.args.stage,):
    print(f"== {stage}", flush=True)
    result = getattr(study, stage)()
    if stage == "report":
      print(f"wrote {result}", flush=True)


if __name__ == "__main__":
  main()
