"""The study's durable records: finished pieces are copied without checkpoints; the store is restored over
missing, unfinished or different pieces and leaves identical ones alone."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import study_store  # noqa: E402


def _write(path, text="x"):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)


def _finished_run(root, name="runs/opid_s0", summary="| success | 0.5 |"):
  run = root / name
  _write(run / "summary.md", summary)
  _write(run / "metrics.jsonl", '{"step": 1}\n')
  _write(run / "eval" / "iter_000016.json", "{}")
  _write(run / "checkpoints" / "16" / "state", "big")
  _write(run / "tb" / "events.out.tfevents.123.host", "tb")
  _write(run / "trajectories" / "iter_000001.jsonl", "{}")
  _write(run / "curves.png", "png")
  return run


def test_record_copies_a_finished_piece_without_checkpoints(tmp_path):
  root, store = tmp_path / "root", tmp_path / "store"
  _finished_run(root)
  _write(root / "sft" / "sft_summary.json", "{}")
  _write(root / "sft" / "expert_steps.jsonl", "cache")
  _write(root / "sft" / "policy" / "model.safetensors", "weights")
  _write(root / "probe_policy.json", "{}")
  for piece in ("runs/opid_s0", "sft", "probe_policy.json"):
    study_store.record(str(root), str(store), piece)
  stored = sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())
  assert stored == [
    "probe_policy.json",
    "runs/opid_s0/eval/iter_000016.json",
    "runs/opid_s0/metrics.jsonl",
    "runs/opid_s0/summary.md",
    "sft/policy/model.safetensors",
    "sft/sft_summary.json",
  ]
  assert study_store.stored_pieces(str(store)) == ["probe_policy.json", "runs/opid_s0", "sft"]


def test_record_refuses_an_unfinished_piece(tmp_path):
  _write(tmp_path / "root" / "runs" / "grpo_s1" / "metrics.jsonl")
  with pytest.raises(ValueError, match="not a finished piece"):
    study_store.record(str(tmp_path / "root"), str(tmp_path / "store"), "runs/grpo_s1")
  assert not (tmp_path / "store").exists()


def test_restore_fills_what_the_root_lacks_and_keeps_what_it_has(tmp_path):
  root, store = tmp_path / "root", tmp_path / "store"
  _finished_run(root, "runs/opid_s0")
  _finished_run(root, "runs/grpo_s0")
  study_store.record(str(root), str(store), "runs/opid_s0")
  study_store.record(str(root), str(store), "runs/grpo_s0")
  _write(store / "notes.md", "history")
  # the root keeps grpo_s0 (identical, with its checkpoints), lost opid_s0, and has a half-done copy of another
  import shutil

  shutil.rmtree(root / "runs" / "opid_s0")
  _finished_run(store, "runs/step_only_s0")
  shutil.rmtree(store / "runs" / "step_only_s0" / "checkpoints")
  _write(root / "runs" / "step_only_s0" / "metrics.jsonl", "partial")
  restored = study_store.restore(str(store), str(root))
  assert restored == ["notes.md", "runs/opid_s0", "runs/step_only_s0"]
  assert (root / "runs" / "grpo_s0" / "checkpoints" / "16" / "state").exists()  # untouched
  assert (root / "runs" / "step_only_s0" / "metrics.jsonl").read_text() == '{"step": 1}\n'
  assert (root / "runs" / "opid_s0" / "summary.md").exists() and (root / "notes.md").read_text() == "history"
  assert study_store.restore(str(store), str(root)) == []  # nothing differs any more


def test_restore_replaces_a_piece_whose_marker_differs(tmp_path):
  root, store = tmp_path / "root", tmp_path / "store"
  _write(store / "sft" / "sft_summary.json", '{"steps": 1000}')
  _write(root / "sft" / "sft_summary.json", '{"steps": 300}')  # a first SFT phase, not the finished SFT
  assert study_store.restore(str(store), str(root)) == ["sft"]
  assert (root / "sft" / "sft_summary.json").read_text() == '{"steps": 1000}'


def test_no_store_is_a_no_op(tmp_path):
  _finished_run(tmp_path / "root")
  study_store.record(str(tmp_path / "root"), "", "runs/opid_s0")
  assert study_store.restore("", str(tmp_path / "root")) == []
  assert study_store.restore(str(tmp_path / "missing"), str(tmp_path / "root")) == []
