"""Reliability figures: the bad-input table through the CLI, and kill -9 / resume trials.

    python benchmarks/reliability.py [--kills 12] [--max-steps 12] [--seed 1]

Prints one JSON line: how many bad inputs were tried and answered cleanly (exit code,
one-sentence message, no traceback), per command; how many training processes were
killed with SIGKILL (at random moments from outside, and inside checkpoint writes on
purpose), how many kills left a half-written checkpoint, how many resumes started from
the newest complete checkpoint, and whether each run, resumed to the end, logged every
step exactly once, loads in plain peft and has the same weights as an uninterrupted run.

Uses the same table and helpers as tests/test_bad_input.py and tests/test_faults.py, in a
throwaway $WORKBENCH_HOME (nothing downloads; the demo model is built there).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def bad_input_figures(work: Path, adapter: Path) -> dict:
    from test_bad_input import bad_inputs, other_base_model, run_forked

    cases = bad_inputs(work / "inputs", adapter, other_base_model(work))
    outcomes = run_forked(cases, work / "outcomes")
    clean = [o for o in outcomes if not o.problems()]
    by_command = Counter(o.case.name.split("/")[0] for o in outcomes)
    clean_by_command = Counter(o.case.name.split("/")[0] for o in clean)
    return {
        "tried": len(outcomes), "clean": len(clean),
        "by_command": {c: {"tried": by_command[c], "clean": clean_by_command[c]} for c in by_command},
        "tracebacks_on_screen": sum("Traceback" in o.stderr + o.stdout for o in outcomes),
        "not_clean": {o.case.name: o.problems() for o in outcomes if o.problems()},
    }


def kill_trials(work: Path, kills: int, max_steps: int, rng: random.Random) -> dict:
    import torch

    from test_faults import (adapter_tensors, disk_state, fast_config, load_in_plain_peft, logged_steps, random_kill,
                             resume_args, resumed_from, train_process)
    from workbench.demo import DEMO_TRAINING, ensure_demo
    from workbench.settings import RunConfig
    from workbench.training import JobState, TrainingJob

    demo = ensure_demo()
    base = RunConfig.from_dict(DEMO_TRAINING)
    reference_dir = work / "reference"
    assert TrainingJob(fast_config(base, reference_dir, max_steps)).run() == JobState.FINISHED
    reference = adapter_tensors(reference_dir)

    figures = Counter()
    runs, done, mismatches = [], 0, []
    while done < kills:
        out = work / f"run{len(runs)}"
        config = fast_config(base, out, max_steps).save(work / f"run{len(runs)}.yaml")
        args, expected, per_run = [config], None, min(kills - done, rng.randint(2, 5))
        finished_by_itself = False
        for k in range(per_run):
            log = work / f"run{len(runs)}-kill{k}.log"
            reached = max(logged_steps(out) or [0])
            later = list(range(reached + 2 - reached % 2, max_steps, 2))  # checkpoints still to be written
            if later and rng.random() < 0.3:  # inside a checkpoint write, on purpose
                where = rng.choice(["mid-write", "before-marker"])
                step = rng.choice(later)
                proc = train_process(args, log, kill_at=f"{where}:{step}")
                code = proc.wait()
                state = {"returncode": code, **disk_state(out)}
                figures["kills_inside_a_checkpoint_write_on_purpose"] += code == -signal.SIGKILL
            else:
                state = random_kill(args, out, log, rng, max_steps, latest=max_steps)
                figures["kills_at_random_moments"] += state["returncode"] == -signal.SIGKILL
            text = log.read_text(errors="replace")
            if args != [config] and ("[training]" in text or "already reached" in text):  # a resume that got going
                figures["resumes_checked"] += 1
                figures["resumes_from_the_newest_complete_checkpoint"] += resumed_from(text) == expected
                if resumed_from(text) != expected:
                    mismatches.append({"log": log.name, "expected": expected, "started": resumed_from(text)})
            expected = state["complete"][-1] if state["complete"] else None
            args = resume_args(out)
            if state["returncode"] != -signal.SIGKILL:
                figures["processes_that_ended_before_the_kill"] += 1
                finished_by_itself = state["returncode"] == 0
                break
            done += 1
            figures["kills_leaving_a_half_written_checkpoint"] += bool(state["incomplete"])
        if finished_by_itself:  # the last process ran to the end before its kill came
            ok = True
        else:
            final = work / f"run{len(runs)}-final.log"
            ok = train_process(resume_args(out), final).wait() == 0
            figures["resumes_checked"] += 1
            started = resumed_from(final.read_text(errors="replace"))
            figures["resumes_from_the_newest_complete_checkpoint"] += started == expected
            if started != expected:
                mismatches.append({"log": final.name, "expected": expected, "started": started})
        steps_ok = logged_steps(out) == list(range(1, max_steps + 1))
        got = adapter_tensors(out) if ok else {}
        same = ok and got.keys() == reference.keys() and all(torch.equal(got[k], reference[k]) for k in reference)
        loads = ok and load_in_plain_peft(demo.model, out) is not None
        runs.append({"finished": ok, "every_step_once": steps_ok, "same_weights_as_uninterrupted": bool(same),
                     "loads_in_plain_peft": bool(loads)})
    figures["killed"] = done
    return {**dict(figures), "runs": len(runs),
            "runs_finished_with_nothing_lost": sum(all(r.values()) for r in runs), "run_details": runs,
            "resumes_not_from_the_newest": mismatches}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=12, help="SIGKILLs to deliver in total (default 12).")
    p.add_argument("--max-steps", type=int, default=12, help="Steps per run (checkpoint every 2).")
    p.add_argument("--seed", type=int, default=1, help="Seed for the kill moments.")
    p.add_argument("--skip-bad-inputs", action="store_true", help="Only the kill trials.")
    args = p.parse_args(argv)
    os.environ.setdefault("WORKBENCH_HOME", tempfile.mkdtemp(prefix="workbench-reliability-"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    work = Path(tempfile.mkdtemp(prefix="reliability-"))
    started = time.time()

    from test_faults import fast_config
    from workbench.demo import DEMO_TRAINING, ensure_demo
    from workbench.settings import RunConfig
    from workbench.training import JobState, TrainingJob

    ensure_demo()
    result = {"benchmark": "reliability", "seed": args.seed, "max_steps": args.max_steps}
    if not args.skip_bad_inputs:
        adapter = work / "adapter"
        job = TrainingJob(fast_config(RunConfig.from_dict(DEMO_TRAINING), adapter, max_steps=2, save_steps=0))
        assert job.run() == JobState.FINISHED, job.message
        result["bad_inputs"] = bad_input_figures(work / "bad", adapter)
    result["kill_trials"] = kill_trials(work / "kills", args.kills, args.max_steps, random.Random(args.seed))
    result["seconds"] = round(time.time() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
