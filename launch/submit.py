#!/usr/bin/env python
"""Submit training runs to SLURM (through submitit), or run them here with --cluster local.

    # one run: 1 node x 8 GPUs, 72 h, requeued with resume on preemption/timeout
    python launch/submit.py --config configs/scratch_gn_r50.yaml --nodes 1 --gpus-per-node 8 \\
        --partition learnfair --time 72:00:00 SOLVER.SCHEDULE 3x
    # a sweep as ONE job array; --dry-run prints the runs and the GPU-hour estimate
    python launch/submit.py --sweep launch/sweeps/paper.yaml --dry-run
    python launch/submit.py --sweep launch/sweeps/paper.yaml --partition learnfair --account myteam
    # no SLURM: the same jobs on this machine (submitit's local executor), waiting for the end
    python launch/submit.py --sweep launch/sweeps/demo.yaml --cluster local --wait

Runs go to <root>/<sweep name>/<run name> (single runs: output/<config name>[/<overrides>]);
`python launch/status.py <sweep dir>` shows their state. Before anything is submitted (and with
--dry-run) the sweep file's entries, the datasets and the run dirs are checked (rethink.cluster.sweep,
rethink.cluster.preflight): every run's datasets and MODEL.WEIGHTS are there, and a run dir that holds
another run (a different resolved config) is refused. A mistake is one message and exit status 2
(RETHINK_TRACEBACK=1 shows the traceback).
"""
import argparse
import logging
import sys

from rethink.cluster.jobs import submit_sweep
from rethink.cluster.preflight import check_submission
from rethink.cluster.status import format_states, wait
from rethink.cluster.sweep import expand, load_sweep, plan_table
from rethink.engine.defaults import run_name
from rethink.utils.usererrors import run_cli

RESOURCE_FLAGS = ("nodes", "gpus_per_node", "cpus_per_task", "time", "partition", "account", "qos", "constraint",
                  "mem", "comment", "array_parallelism", "max_num_timeout", "max_retries", "signal_delay_s")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", help="one run of this config")
    what.add_argument("--sweep", help="a sweep YAML (launch/sweeps/*.yaml)")
    p.add_argument("--cluster", default="slurm", choices=["slurm", "local", "debug"])
    p.add_argument("--dry-run", action="store_true", help="print the runs and submit nothing")
    p.add_argument("--root", help="output root (default: the sweep's `root`, or output/ for --config)")
    p.add_argument("--wait", action="store_true", help="wait until every run is done or failed")
    p.add_argument("--nodes", type=int)
    p.add_argument("--gpus-per-node", type=int, help="ranks per node (GPUs are requested when MODEL.DEVICE is cuda)")
    p.add_argument("--cpus-per-task", type=int)
    p.add_argument("--time", help="[D-]HH:MM:SS per job; longer runs requeue and resume")
    for flag in ("partition", "account", "qos", "constraint", "mem", "comment"):
        p.add_argument(f"--{flag}")
    p.add_argument("--array-parallelism", type=int, help="runs of a sweep at once")
    p.add_argument("--max-num-timeout", type=int, help="requeues after timeouts")
    p.add_argument("--max-retries", type=int, help="requeues after transient failures (CUDA OOM, a lost peer), per run")
    p.add_argument("--signal-delay-s", type=int, help="seconds between SLURM's warning signal and the kill")
    p.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE", help="any other #SBATCH option")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides for every run")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%m/%d %H:%M:%S")
    return run_cli(submit, args)  # a user error (sweep, config, dataset, weights): one message, exit status 2


def submit(args) -> int:
    if args.sweep:
        sweep = load_sweep(args.sweep, root=args.root)
        if args.opts:
            sweep = expand({**sweep.source, "overrides": list(sweep.source.get("overrides") or []) + args.opts},
                           args.sweep, root=args.root)
    else:
        name = run_name(args.config, args.opts)
        sweep = expand({"name": name, "root": args.root or "output", "config": args.config, "overrides": args.opts,
                        "single": True}, args.config)
    flags = {k: getattr(args, k) for k in RESOURCE_FLAGS}
    sbatch = dict(kv.split("=", 1) for kv in args.sbatch)
    sweep.resources = sweep.resources.updated(**flags, sbatch={**sweep.resources.sbatch, **sbatch} or None)
    print(plan_table(sweep, args.cluster), flush=True)
    check_submission(sweep, args.sweep or args.config)
    if args.dry_run:
        return 0
    submit_sweep(sweep, args.cluster)
    if args.wait:
        rows = wait(sweep, report=lambda rows: print(format_states(rows), flush=True))
        return 1 if any(r["state"] != "done" for r in rows) else 0
    print(f"status: python launch/status.py {sweep.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
