"""Study v2 on real ALFWorld games (issue #25; the pre-registered plan is results/cpu_study_v2.md): screening of the
task types the SFT start never solves, then E1 (GRPO against OPID at two lambdas, trained only on those types).

  python benchmarks/cpu_study_v2.py                        # every stage, skipping what is already done
  python benchmarks/cpu_study_v2.py --stage=e1 --seeds=0
  python benchmarks/cpu_study_v2.py --stage=report
  python benchmarks/cpu_study_v2.py --short --root=/tmp/s2 --data_dir=... --train_split=valid_unseen  # minutes (CI)

Stages (each resumable; a finished piece is skipped, an interrupted run resumes from its checkpoint):
  lists    the screening and E2 game lists (GAMES/screen.txt, e2_pool.txt, e2_train.txt); kept when present and
           checked against a fresh derivation
  screen   the SFT policy plays GAMES/screen.txt at the rollout temperature -> ROOT/screen; then E1's types and
           lists (GAMES/e1_*.txt)
  e1       the SFT policy's greedy evaluation on e1_eval.txt (ROOT/e1/initial), then every (seed, variant) run
           -> ROOT/e1/runs/<variant>_s<seed>, seeds outermost
  report   REPORT (default results/cpu_study_v2.md): the plan, word for word, then the results
E2 (the plan's second experiment) is not implemented yet: it starts after E1 has finished.

Pieces are copied into STORE (default results/cpu_study_v2/) as they finish and restored from it first, as in
cpu_study.py. The game lists live in GAMES (default STORE/games; with --short ROOT/games). Every piece runs from the
code commit in STORE/code_commit.txt, recorded when the first piece starts: a change to opid_jax/ or configs/ since
then stops the study (run it from a worktree of that commit: git worktree add --detach DIR COMMIT).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT_DIR)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cpu_study  # noqa: E402
import study_store  # noqa: E402
import study_v2_lists as lists  # noqa: E402

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
PINNED_PATHS = ("opid_jax", "configs")
VALID_SPLITS = ("valid_seen", "valid_unseen")


def e1_piece(variant: str, seed: int) -> str:
  return os.path.join("e1", "runs", f"{variant}_s{seed}")


class Study:
  def __init__(self, args):
    self.args = args
    self.root = os.path.abspath(args.root)
    self.sizes = lists.SHORT if args.short else lists.FULL
    self.store = args.store
    self.games = os.path.abspath(args.games or os.path.join(self.store or self.root, "games"))
    for piece in study_store.restore(self.store, self.root):
      print(f"restored {piece} from {self.store}", flush=True)

  # --- helpers -----------------------------------------------------------------------------------------------
  def game_list(self, name: str) -> str:
    return os.path.join(self.games, f"{name}.txt")

  def split(self, name: str) -> list[str]:
    return alfworld.list_games(self.args.data_dir, name)

  def valid_games(self) -> list[str]:
    return [g for s in self.args.valid_splits for g in self.split(s)]

  def check_code(self) -> None:
    """Records the code commit when the first piece starts; stops when opid_jax/ or configs/ changed since."""
    if not self.store or self.args.short:  # the short form tests the machinery of whatever code is checked out
      return
    path = os.path.join(self.store, "code_commit.txt")
    git = ["git", "-C", ROOT_DIR]
    if not os.path.exists(path):
      head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
      os.makedirs(self.store, exist_ok=True)
      with open(path, "w") as f:
        f.write(f"{head}\nEvery piece of the study runs from this commit's opid_jax/ and configs/.\n")
    commit = open(path).read().split()[0]
    changed = subprocess.run([*git, "diff", "--quiet", commit, "--", *PINNED_PATHS]).returncode
    if changed:
      raise SystemExit(
        f"error: opid_jax/ or configs/ differ from the study's commit {commit[:12]}; run the study from a worktree "
        f"of it (git worktree add --detach DIR {commit[:12]}) with --store pointing here"
      )

  def run(self, module: str, piece: str, overrides: dict, extra=(), minutes: float = 0.0) -> float:
    self.check_code()
    overrides = {
      "model.path": self.args.policy,
      "env.data_dir": self.args.data_dir,
      "env.train_split": self.args.train_split,
      **COMMON,
      **(cpu_study.SHORT_RL if self.args.short else {}),
      **overrides,
    }
    return cpu_study.run_module(
      module, RL_CONFIG, os.path.join(self.root, piece), overrides, extra, self.args.until, minutes
    )

  def evaluate(self, piece: str, games: str, temperature: float) -> None:
    """One episode per game of the list `games` with the SFT policy -> ROOT/piece/eval.json and eval.games.json."""
    workdir = os.path.join(self.root, piece)
    if os.path.exists(os.path.join(workdir, "eval.json")):
      return
    overrides = {"env.eval_games": self.game_list(games), "rollout.eval_temperature": temperature}
    seconds = self.run("opid_jax.evaluate", piece, overrides, ["--num_tasks=0"], minutes=self.args.run_minutes / 2)
    with open(os.path.join(workdir, "time.json"), "w") as f:
      json.dump({"seconds": seconds}, f)
    for suffix in (".games.json", ".md", ".json"):  # eval.json last: it marks the piece finished
      os.replace(os.path.join(workdir, f"eval_{games}{suffix}"), os.path.join(workdir, f"eval{suffix}"))
    study_store.record(self.root, self.store, piece)
    print(f"{piece}: {seconds:.0f} s", flush=True)

  def outcomes(self, piece: str) -> dict:
    return json.load(open(os.path.join(self.root, piece, "eval.games.json")))

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
    self.evaluate("screen", "screen", SCREEN_TEMPERATURE)
    types = lists.e1_types(self.outcomes("screen"), self.sizes)
    if not types:
      print("screening: no task type qualifies for E1", flush=True)
      return
    train = self.split(self.args.train_split)
    screen = alfworld.read_game_list(self.args.data_dir, self.game_list("screen"))
    named = lists.e1_lists(train, self.valid_games(), types, screen, self.sizes)
    self.write_lists(named, f"E1's task types {', '.join(types)} (from the screening); do not edit")

  def e1_types(self) -> list[str]:
    if not os.path.exists(os.path.join(self.root, "screen", "eval.json")):
      return []
    return lists.e1_types(self.outcomes("screen"), self.sizes)

  def e1(self) -> None:
    self.screen()
    if not self.e1_types():
      return
    self.evaluate(os.path.join("e1", "initial"), "e1_eval", 0.0)
    for seed in self.args.seeds:
      for variant in self.args.variants:
        piece = e1_piece(variant, seed)
        if os.path.exists(os.path.join(self.root, piece, "summary.md")):
          continue
        overrides = {
          "env.train_games": self.game_list("e1_train"),
          "env.eval_games": self.game_list("e1_eval"),
          "train.seed": seed,
          "optim.lr": E1_LR,
          "opid.routing": "critical_first",
          **E1_VARIANTS[variant],
        }
        if self.args.short:
          overrides["train.eval_tasks"] = 0  # the short lists are already tiny
        seconds = self.run("opid_jax.train", piece, overrides, minutes=self.args.run_minutes)
        cpu_study.require_finished(os.path.join(self.root, piece))
        study_store.record(self.root, self.store, piece)
        print(f"run {variant} seed {seed}: {seconds:.0f} s", flush=True)

  def report(self) -> str:
    from study_v2_report import write_report

    return write_report(self)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--root", default="runs/cpu_study_v2")
  p.add_argument("--stage", default="all", choices=("all", "lists", "screen", "e1", "report"))
  p.add_argument("--variants", default=",".join(E1_VARIANTS))
  p.add_argument("--seeds", default=",".join(map(str, E1_SEEDS)))
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
    p, p.parse_args(argv), E1_VARIANTS, os.path.join(ROOT_DIR, "results", "cpu_study_v2")
  )
  args.valid_splits = [s for s in args.valid_splits.split(",") if s]
  args.policy = os.path.abspath(args.policy)
  return args


def main(argv=None) -> None:
  cpu_study.run_stages(Study(parse_args(argv)), ("lists", "screen", "e1", "report"))


if __name__ == "__main__":
  main()
