#!/usr/bin/env python
"""State of a submitted sweep (or single run): per run pending / running / requeued / done / failed
(with the tail of its error; `failed (killed)`: a local job gone without a result) / stale (the run
dir holds another config's run), last iteration, latest box and mask AP, fork trunk/branches.

    python launch/status.py output/sweeps/paper
    python launch/status.py output/sweeps/paper --resubmit-failed   # resume failed runs in a new array
    python launch/status.py output/sweeps/paper --wait              # until no run can change any more
    python launch/status.py output/scratch_gn_r50                   # a run directory of tools/train.py
"""
import argparse
import logging
import sys

from rethink.cluster.jobs import submit_sweep
from rethink.cluster.status import format_states, is_resubmittable, load_submitted_sweep, run_states, wait
from rethink.cluster.sweep import fork_summary, submissions
from rethink.utils.usererrors import run_cli


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_dir")
    p.add_argument("--resubmit-failed", action="store_true")
    p.add_argument("--wait", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_cli(report, args)  # a user error (no sweep there, a bad sweep file): one message, exit status 2


def report(args) -> int:
    sweep = load_submitted_sweep(args.sweep_dir)
    rows = wait(sweep, report=lambda r: print(format_states(r), flush=True)) if args.wait else run_states(sweep)
    if not args.wait:
        print(format_states(rows))
    if fork_summary(sweep):
        print(fork_summary(sweep))
    if args.resubmit_failed:
        failed = [r["run"] for r in rows if is_resubmittable(r["state"])]
        if failed:
            subs = submissions(sweep.dir)
            ids = submit_sweep(sweep, subs[-1]["cluster"] if subs else "slurm", only=failed)
            print(f"resubmitted {len(ids)} runs: {ids}")
        else:
            print("no failed runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
