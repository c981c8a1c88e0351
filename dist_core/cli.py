"""``launch.py``: run | validate | submit | status | logs | stop | resume.

Mistakes in a job file print one line ``file:line: field: reason`` and exit 2; a run that fails
prints one line (the traceback is in the run directory's ``run.log``) and exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import ClusterError, DistCoreError, SpecError

EXIT_USAGE = 2
EXIT_FAILED = 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch.py", description="Run dist_core jobs on embedded Ray or a cluster.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_set(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of the job file, e.g. --set bilevel.rounds=20 (repeatable)")

    run = sub.add_parser("run", help="run a job file (embedded Ray unless --address)")
    run.add_argument("file", help="job file, e.g. jobs/quickstart.yaml")
    run.add_argument("--out", default="runs", help="parent of the run directory (default: runs/)")
    run.add_argument("--address", default=None, help="join this Ray cluster instead of starting one")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_set(run)

    val = sub.add_parser("validate", help="check a job file and print the resolved job")
    val.add_argument("file")
    val.add_argument("--quiet", action="store_true", help="print nothing when valid")
    add_set(val)

    sm = sub.add_parser("submit", help="submit a job file to a cluster through the Ray Jobs API")
    sm.add_argument("file")
    sm.add_argument("--address", default=None, help="Jobs API address (default: $RAY_API_SERVER_ADDRESS or http://127.0.0.1:8265)")
    sm.add_argument("--follow", action="store_true", help="stream the logs until the job ends")
    add_set(sm)

    for name, text in (("status", "print a submitted job's status"), ("stop", "stop a submitted job")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("id", help="job id printed by submit")
        sp.add_argument("--address", default=None)
    lg = sub.add_parser("logs", help="print a submitted job's logs")
    lg.add_argument("id")
    lg.add_argument("--address", default=None)
    lg.add_argument("--follow", action="store_true", help="keep streaming until the job ends")

    rs = sub.add_parser("resume", help="continue an interrupted run from its last checkpoint")
    rs.add_argument("run_dir")
    rs.add_argument("--address", default=None)
    rs.add_argument("--no-progress", action="store_true")
    return p


def _api_address(arg: str | None) -> str:
    from .submit import DEFAULT_ADDRESS

    return arg or os.environ.get("RAY_API_SERVER_ADDRESS") or DEFAULT_ADDRESS


def _print_summary(summary: dict) -> None:
    """The final metrics as an aligned table: nested results (per method, per α) become dotted rows."""
    print(f"{summary['name']}: {summary['status']} in {summary['wall_s']:.1f} s")
    if summary.get("trials_table"):
        print(summary["trials_table"])
    rows = list(_flat(summary.get("metrics", {})))
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def _flat(metrics: dict, prefix: str = ""):
    for key, value in metrics.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        elif isinstance(value, float):
            yield f"{prefix}{key}", f"{value:.4g}"
        elif isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
            yield f"{prefix}{key}", "[" + ", ".join(f"{v:.4g}" for v in value) + "]"
        else:
            yield f"{prefix}{key}", str(value)


def _follow(job_id: str, address: str) -> int:
    from . import submit

    for chunk in submit.follow(job_id, address):
        sys.stdout.write(chunk)
        sys.stdout.flush()
    state = submit.status(job_id, address)
    print(f"job {job_id}: {state}")
    return 0 if state == "SUCCEEDED" else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "validate":
            from . import spec

            job = spec.load(args.file, args.overrides)
            if not args.quiet:
                print(spec.dump(job), end="")
            return 0
        if args.command == "run":
            from . import runner, spec

            job = spec.load(args.file, args.overrides)  # before anything touches the disk
            summary = runner.run_job(job, Path(args.out), args.address, progress=not args.no_progress)
            _print_summary(summary)
            return 0
        if args.command == "resume":
            from . import runner

            summary = runner.resume_job(Path(args.run_dir), address=args.address, progress=not args.no_progress)
            _print_summary(summary)
            return 0
        from . import submit

        address = _api_address(args.address)
        if args.command == "submit":
            job_id = submit.submit(args.file, args.overrides, address)
            print(job_id)
            return _follow(job_id, address) if args.follow else 0
        if args.command == "status":
            print(submit.status(args.id, address))
            return 0
        if args.command == "logs":
            if args.follow:
                return _follow(args.id, address)
            sys.stdout.write(submit.logs(args.id, address))
            return 0
        if args.command == "stop":
            print("stopped" if submit.stop(args.id, address) else "already finished")
            return 0
    except SpecError as e:
        print(str(e), file=sys.stderr)
        return EXIT_USAGE
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except DistCoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
