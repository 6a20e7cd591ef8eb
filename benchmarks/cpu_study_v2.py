"""Study v2 on real ALFWorld games (issue #25; the pre-registered plan is results/cpu_study_v2.md): screening of the
task types the SFT start never solves, E1 (GRPO against OPID at two lambdas, trained only on those types), then E2
(GRPO tuned until it learns, lambda chosen, OPID against GRPO and the routing ablations).

  python benchmarks/cpu_study_v2.py                        # every stage, skipping what is already done
  python benchmarks/cpu_study_v2.py --stage=e1 --seeds=0
  python benchmarks/cpu_study_v2.py --stage=report
  python benchmarks/cpu_study_v2.py --short --root=/tmp/s2 --data_dir=... --train_split=valid_unseen \
      --valid_splits=valid_seen --tune_split=valid_seen        # minutes (CI)

Stages (each resumable; a finished piece is skipped, an interrupted run resumes from its checkpoint):
  lists    the screening and E2 game lists (GAMES/screen.txt, e2_pool.txt, e2_train.txt); kept when present and
           checked against a fresh derivation
  screen   the SFT policy plays GAMES/screen.txt at the rollout temperature -> ROOT/screen; then E1's types and
           lists (GAMES/e1_*.txt)
  e1       the SFT policy's greedy evaluation on e1_eval.txt (ROOT/e1/initial), then every (seed, variant) run
           -> ROOT/e1/runs/<variant>_s<seed>, seeds outermost
  e2       the SFT policy on the tuning split (ROOT/e2/tune/initial); tuning runs T1.. until one passes the gate
           (ROOT/e2/tune/T<k>); the lambda runs (ROOT/e2/lambda/opid_l<lambda>); GAMES/e2_eval.txt; the SFT policy
           on it (ROOT/e2/initial); every (seed, variant) run -> ROOT/e2/runs/<variant>_s<seed>
  report   REPORT (default results/cpu_study_v2.md): the plan, word for word, then the results

Pieces are copied into STORE (default results/cpu_study_v2/) as they finish and restored from it first, as in
cpu_study.py. The game lists live in GAMES (default STORE/games; with --short ROOT/games). Every piece runs the
opid_jax/ and configs/ of CODE_TREE (default this checkout), which must equal the commit in STORE/code_commit.txt,
recorded when the first piece started: after later changes, make a worktree of that commit and pass --code_tree.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import subprocess
import sys

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT_DIR)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cpu_study  # noqa: E402
import study_store  # noqa: E402
import study_v2_lists as lists  # noqa: E402
import study_v2_skill_signal as skill_signal  # noqa: E402

from opid_jax.envs import alfworld  # noqa: E402

RL_CONFIG = cpu_study.RL_CONFIG
POLICY = os.path.join(ROOT_DIR, "results", "cpu_study", "sft", "policy")
SCREEN_TEMPERATURE = 0.7  # configs/alfworld_small.py rollout.temperature: the screening plays like training
COMMON = {"rollout.engine": "continuous"}
E1_LR = 1e-4
E1_VARIANTS = {  # name -> overrides
  "grpo": {"opid.lambda_skill": 0.0},
  "opid_l0.1": {"opid.lambda_skill": 0.1},
  "opid_l1": {"opid.lambda_skill": 1.0},
}
E1_SEEDS = (0, 1, 2)
E2_VARIANTS = {  # name -> (overrides on top of the passing tuning settings and the chosen lambda, seeds)
  "grpo": ({"opid.lambda_skill": 0.0}, 5),
  "opid": ({"opid.routing": "critical_first"}, 5),
  "episode_only": ({"opid.routing": "episode_only"}, 3),
  "step_only": ({"opid.routing": "step_only"}, 3),
  "superimpose": ({"opid.routing": "superimpose"}, 3),
}
E2_TUNING = (  # GRPO, seed 0, in the plan's order; T6 follows from T1-T5 (tuning_t6)
  ("T1", {"optim.lr": 1e-4}),
  ("T2", {"optim.lr": 3e-4}),
  ("T3", {"optim.lr": 1e-4, "rollout.temperature": 1.0}),
  ("T4", {"optim.lr": 1e-4, "rollout.tasks_per_batch": 2, "rollout.group_size": 8}),
  ("T5", {"optim.lr": 1e-4, "train.steps": 32}),
)
E2_LAMBDAS = (0.01, 0.1, 1.0)
GATE_SIGMAS = 3.0
RL_STEPS = cpu_study.RL_ITERATIONS
PINNED_PATHS = ("opid_jax", "configs")
VALID_SPLITS = ("valid_seen", "valid_unseen")
STAGES = ("lists", "screen", "e1", "e2", "report")


def e1_piece(variant: str, seed: int) -> str:
  return os.path.join("e1", "runs", f"{variant}_s{seed}")


def e2_piece(variant: str, seed: int) -> str:
  return os.path.join("e2", "runs", f"{variant}_s{seed}")


def tuning_t6(successes: dict[str, float]) -> tuple[str, dict]:
  """T6: the best of T1-T5 (ties: the earlier) run longer: 32 iterations, or 48 when it already had 32.

  When the best is T1, its 32-iteration run is T5 itself (same settings, same seed, bit-identical for the
  iterations they share), so T6 takes the plan's 48-iteration branch instead of repeating T5 (deviations.md)."""
  best_name = max(successes, key=lambda name: (successes[name], -int(name[1:])))
  overrides = dict(dict(E2_TUNING)[best_name])
  longer = {**overrides, "train.steps": 32}
  already_run = overrides.get("train.steps", RL_STEPS) >= 32 or longer in dict(E2_TUNING).values()
  overrides["train.steps"] = 48 if already_run else 32
  return best_name, overrides


def gate(success: float, initial: float, games: int, sigmas: float = GATE_SIGMAS) -> tuple[bool, float]:
  """(passes, standard error): does the tuned success beat the SFT start's by more than `sigmas` binomial standard
  errors of the difference (both measured on the same `games` games)?"""
  se = math.sqrt((success * (1 - success) + initial * (1 - initial)) / games)
  return success - initial > sigmas * se, se


def heldout_size(success: float, valid_games: int, sizes: lists.Sizes) -> int:
  """E2's held-out games: the smallest size from e2_heldout_min in steps of e2_heldout_step that puts one
  evaluation's binomial standard error (valid + held-out games) at or below 1 point; the whole pool if none does."""
  for n in range(sizes.e2_heldout_min, sizes.e2_pool + 1, sizes.e2_heldout_step):
    if math.sqrt(success * (1 - success) / (valid_games + n)) <= 0.01:
      return n
  return sizes.e2_pool


def choose_lambda(successes: dict[float, float]) -> float:
  """The lambda with the best valid_train success; ties: the smaller."""
  return max(sorted(successes), key=lambda lam: (successes[lam], -lam))


class Study:
  def __init__(self, args):
    self.args = args
    self.root = os.path.abspath(args.root)
    self.short = args.short
    self.sizes = lists.SHORT if args.short else lists.FULL
    self.store = args.store
    self.games = os.path.abspath(args.games or os.path.join(self.store or self.root, "games"))
    # The short form plans one seed per variant, one tuning run and one lambda.
    self.e1_seeds = (0,) if args.short else E1_SEEDS
    self.e2_seeds = {v: 1 if args.short else n for v, (_, n) in E2_VARIANTS.items()}
    self.tuning = E2_TUNING[:1] if args.short else E2_TUNING
    self.lambdas = E2_LAMBDAS[-1:] if args.short else E2_LAMBDAS
    for piece in study_store.restore(self.store, self.root):
      print(f"restored {piece} from {self.store}", flush=True)

  # --- helpers -----------------------------------------------------------------------------------------------
  def game_list(self, name: str) -> str:
    return os.path.join(self.games, f"{name}.txt")

  def split(self, name: str) -> list[str]:
    return alfworld.list_games(self.args.data_dir, name)

  def valid_games(self) -> list[str]:
    return [g for s in self.args.valid_splits for g in self.split(s)]

  def wanted(self, variant: str, seed: int) -> bool:
    """--variants and --seeds restrict which planned runs this invocation starts (default: all)."""
    return (not self.args.variants or variant in self.args.variants) and (
      not self.args.seeds or seed in self.args.seeds
    )

  def finished(self, piece: str) -> bool:
    return study_store.marker(os.path.join(self.root, piece)) is not None

  def check_code(self) -> None:
    """Records the code commit when the first piece starts; stops when opid_jax/ or configs/ of the code tree
    changed since."""
    if not self.store or self.short:  # the short form tests the machinery of whatever code is checked out
      return
    path = os.path.join(self.store, "code_commit.txt")
    git = ["git", "-C", self.args.code_tree]
    if not os.path.exists(path):
      head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
      os.makedirs(self.store, exist_ok=True)
      with open(path, "w") as f:
        f.write(f"{head}\nEvery piece of the study runs from this commit's opid_jax/ and configs/.\n")
    commit = open(path).read().split()[0]
    changed = subprocess.run([*git, "diff", "--quiet", commit, "--", *PINNED_PATHS]).returncode
    if changed:
      raise SystemExit(
        f"error: opid_jax/ or configs/ in {self.args.code_tree} differ from the study's commit {commit[:12]}; make "
        f"a worktree of it (git worktree add --detach DIR {commit[:12]}) and pass --code_tree=DIR"
      )

  def run(self, module: str, piece: str, overrides: dict, extra=(), minutes: float = 0.0) -> float:
    self.check_code()
    overrides = {
      "model.path": self.args.policy,
      "env.data_dir": self.args.data_dir,
      "env.train_split": self.args.train_split,
      **COMMON,
      **(cpu_study.SHORT_RL if self.short else {}),
      **overrides,
    }
    workdir = os.path.join(self.root, piece)
    return cpu_study.run_module(
      module, RL_CONFIG, workdir, overrides, extra, self.args.until, minutes, self.args.code_tree
    )

  def evaluate(self, piece: str, temperature: float, games: str = "", split: str = "") -> None:
    """The SFT policy plays one episode per game of the list `games` (or of the split `split`) ->
    ROOT/piece/eval.json and eval.games.json."""
    workdir = os.path.join(self.root, piece)
    if self.finished(piece):
      return
    overrides = {"rollout.eval_temperature": temperature}
    if games:
      overrides["env.eval_games"] = self.game_list(games)
    else:
      overrides.update({"env.eval_games": "", "env.eval_split": split})
    num_tasks = cpu_study.SHORT_RL["train.eval_tasks"] if self.short and split else 0
    seconds = self.run(
      "opid_jax.evaluate", piece, overrides, [f"--num_tasks={num_tasks}"], minutes=self.args.run_minutes / 2
    )
    with open(os.path.join(workdir, "time.json"), "w") as f:
      json.dump({"seconds": seconds}, f)
    for suffix in (".games.json", ".md", ".json"):  # eval.json last: it marks the piece finished
      os.replace(os.path.join(workdir, f"eval_{games or split}{suffix}"), os.path.join(workdir, f"eval{suffix}"))
    study_store.record(self.root, self.store, piece)
    print(f"{piece}: {seconds:.0f} s", flush=True)

  def train(self, piece: str, overrides: dict, label: str) -> None:
    """One RL run to its last iteration (resuming when it was interrupted), recorded in the store with the summary
    of its skill term (skill_signal.json)."""
    workdir = os.path.join(self.root, piece)
    if self.finished(piece):
      return
    minutes = self.args.run_minutes * int(overrides.get("train.steps", RL_STEPS)) / RL_STEPS
    seconds = self.run("opid_jax.train", piece, overrides, minutes=minutes)
    cpu_study.require_finished(workdir)
    skill_signal.write(workdir)
    study_store.record(self.root, self.store, piece)
    print(f"run {label}: {seconds:.0f} s", flush=True)

  def outcomes(self, piece: str) -> dict:
    return json.load(open(os.path.join(self.root, piece, "eval.games.json")))

  def success(self, piece: str) -> float | None:
    """A finished piece's final evaluation success (an evaluation piece, or a run's last evaluation)."""
    if not self.finished(piece):
      return None
    path = os.path.join(self.root, piece, "eval.json")
    if os.path.exists(path):
      return json.load(open(path))["table"]["all"]["success"]
    evals = sorted(glob.glob(os.path.join(self.root, piece, "eval", "iter_*[0-9].json")))
    return json.load(open(evals[-1]))["all"]["success"]

  def write_lists(self, named: dict[str, list[str]], header: str) -> None:
    """Writes each list, or checks that the committed one equals the fresh derivation."""
    for name, games in named.items():
      path = self.game_list(name)
      if os.path.exists(path):
        if alfworld.read_game_list(self.args.data_dir, path) != games:
          raise SystemExit(f"error: {path} differs from its derivation (study_v2_lists.py); it is a fixed list")
        continue
      alfworld.write_game_list(path, games, header=f"{name}: {header}")
      print(f"wrote {path} ({len(games)} games)", flush=True)

  # --- stages ------------------------------------------------------------------------------------------------
  def lists(self) -> None:
    train = self.split(self.args.train_split)
    header = f"derived by benchmarks/study_v2_lists.py from the {self.args.train_split} split (do not edit)"
    self.write_lists({"screen": lists.screen_list(train, self.sizes), **lists.e2_lists(train, self.sizes)}, header)

  def screen(self) -> None:
    self.lists()
    self.evaluate("screen", SCREEN_TEMPERATURE, games="screen")
    types = lists.e1_types(self.outcomes("screen"), self.sizes)
    if not types:
      print("screening: no task type qualifies for E1", flush=True)
      return
    train = self.split(self.args.train_split)
    screen = alfworld.read_game_list(self.args.data_dir, self.game_list("screen"))
    named = lists.e1_lists(train, self.valid_games(), types, screen, self.sizes)
    self.write_lists(named, f"E1's task types {', '.join(types)} (from the screening); do not edit")

  def e1_types(self) -> list[str]:
    if not self.finished("screen"):
      return []
    return lists.e1_types(self.outcomes("screen"), self.sizes)

  def e1(self) -> None:
    self.screen()
    if not self.e1_types():
      return
    self.evaluate(os.path.join("e1", "initial"), 0.0, games="e1_eval")
    for seed in self.e1_seeds:
      for variant, overrides in E1_VARIANTS.items():
        if not self.wanted(variant, seed):
          continue
        run = {
          "env.train_games": self.game_list("e1_train"),
          "env.eval_games": self.game_list("e1_eval"),
          "train.seed": seed,
          "optim.lr": E1_LR,
          "opid.routing": "critical_first",
          **overrides,
        }
        if self.short:
          run["train.eval_tasks"] = 0  # the short lists are already tiny
        self.train(e1_piece(variant, seed), run, f"e1 {variant} seed {seed}")

  # --- E2 ----------------------------------------------------------------------------------------------------
  def tuning_run(self, overrides: dict) -> dict:
    """A tuning (or lambda) run: seed 0, E2's training games, evaluated on the tuning split only."""
    return {
      "env.train_games": self.game_list("e2_train"),
      "env.eval_games": "",
      "env.eval_split": self.args.tune_split,
      "train.seed": 0,
      "opid.lambda_skill": 0.0,
      "opid.routing": "critical_first",
      **overrides,
    }

  def e2_settings(self, run_missing: bool = True) -> tuple[str, dict] | None:
    """The first tuning run that passes the gate, (name, overrides); None when none has (yet)."""
    initial_piece = os.path.join("e2", "tune", "initial")
    if run_missing:
      self.evaluate(initial_piece, 0.0, split=self.args.tune_split)
    initial = self.success(initial_piece)
    if initial is None:
      return None
    games = len(self.outcomes(initial_piece))
    plan = list(self.tuning)
    done: dict[str, float] = {}
    while plan:
      name, overrides = plan.pop(0)
      piece = os.path.join("e2", "tune", name)
      if run_missing:
        self.train(piece, self.tuning_run(overrides), f"e2 tuning {name}")
      success = self.success(piece)
      if success is None:
        return None
      done[name] = success
      if self.args.skip_gate or gate(success, initial, games)[0]:
        return name, overrides
      if name == "T5":
        _, t6 = tuning_t6(done)
        plan.append(("T6", t6))
    return None

  def e2_lambda(self, settings: dict, run_missing: bool = True) -> float | None:
    successes = {}
    for lam in self.lambdas:
      piece = os.path.join("e2", "lambda", f"opid_l{lam:g}")
      if run_missing:
        self.train(piece, self.tuning_run({**settings, "opid.lambda_skill": lam}), f"e2 lambda {lam:g}")
      success = self.success(piece)
      if success is None:
        return None
      successes[lam] = success
    return choose_lambda(successes)

  def e2(self) -> None:
    self.lists()
    passed = self.e2_settings()
    if passed is None:
      print("e2: no tuning run passed the gate; E2 stops (see the plan)", flush=True)
      return
    name, settings = passed
    lam = self.e2_lambda(settings)
    valid = lists.valid_games(self.valid_games(), alfworld.TASK_TYPES, self.sizes)
    n = heldout_size(self.success(os.path.join("e2", "tune", name)), len(valid), self.sizes)
    pool = alfworld.read_game_list(self.args.data_dir, self.game_list("e2_pool"))
    header = f"valid splits + the first {n} games of e2_pool.txt (heldout_size; tuning run {name}); do not edit"
    self.write_lists({"e2_eval": lists.e2_eval(self.valid_games(), pool, n, self.sizes)}, header)
    self.evaluate(os.path.join("e2", "initial"), 0.0, games="e2_eval")
    for seed in range(max(self.e2_seeds.values())):
      for variant, (overrides, _) in E2_VARIANTS.items():
        if seed >= self.e2_seeds[variant] or not self.wanted(variant, seed):
          continue
        run = {
          **self.tuning_run({**settings, "opid.lambda_skill": lam}),
          "env.eval_games": self.game_list("e2_eval"),
          "train.seed": seed,
          **overrides,
        }
        if self.short:
          run["train.eval_tasks"] = 0
        self.train(e2_piece(variant, seed), run, f"e2 {variant} seed {seed}")

  def add_skill_signals(self) -> None:
    """Summarizes the skill term of finished runs that lack the summary while their trajectory dumps are here (runs
    recorded before skill_signal.json existed), and records them again."""
    for workdir in sorted(glob.glob(os.path.join(self.root, "e[12]", "**", "trajectories"), recursive=True)):
      workdir = os.path.dirname(workdir)
      piece = os.path.relpath(workdir, self.root)
      if self.finished(piece) and not os.path.exists(os.path.join(workdir, skill_signal.FILE)):
        if skill_signal.write(workdir):
          study_store.record(self.root, self.store, piece)
          print(f"{piece}: wrote {skill_signal.FILE}", flush=True)

  def report(self) -> str:
    from study_v2_report import write_report

    self.add_skill_signals()
    return write_report(self)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--root", default="runs/cpu_study_v2")
  p.add_argument("--stage", default="all", choices=("all", *STAGES))
  p.add_argument("--variants", default="", help="start only these variants' runs (default: every planned one)")
  p.add_argument("--seeds", default="", help="start only these seeds' runs (default: every planned one)")
  p.add_argument("--tune_split", default="valid_train", help="E2's tuning evaluation split")
  p.add_argument("--code_tree", default=ROOT_DIR, help="the checkout whose opid_jax/ and configs/ the pieces run")
  p.add_argument(
    "--skip_gate", action="store_true", help="machinery tests only: E2 goes on past a failed gate (the report says so)"
  )
  p.add_argument("--data_dir", default="data/alfworld")
  p.add_argument("--train_split", default="train")
  p.add_argument("--valid_splits", default=",".join(VALID_SPLITS))
  p.add_argument("--policy", default=POLICY)
  p.add_argument("--games", default="", help="folder of the game lists (default STORE/games, or ROOT/games)")
  p.add_argument("--report", default="results/cpu_study_v2.md")
  p.add_argument("--store", default=None, help="default results/cpu_study_v2 (none with --short); '' for none")
  p.add_argument("--until", default="", help="local ISO time: start no piece that would end later")
  p.add_argument("--run_minutes", type=float, default=40.0, help="estimated minutes of one run with its evaluation")
  p.add_argument("--short", action="store_true", help="minutes: tiny lists and runs (CI)")
  args = cpu_study.resolve_common_args(
    p, p.parse_args(argv), {**E1_VARIANTS, **E2_VARIANTS}, os.path.join(ROOT_DIR, "results", "cpu_study_v2")
  )
  args.code_tree = os.path.abspath(args.code_tree)
  args.valid_splits = [s for s in args.valid_splits.split(",") if s]
  args.policy = os.path.abspath(args.policy)
  return args


def main(argv=None) -> None:
  cpu_study.run_stages(Study(parse_args(argv)), STAGES)


if __name__ == "__main__":
  main()
