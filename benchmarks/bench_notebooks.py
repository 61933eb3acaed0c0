"""Minutes and peak memory of every notebook at one run profile.

The table feeds the instructor guide's workshop schedule and checks that every
notebook stays within Binder's memory (2 GB) at the ``workshop`` profile.

    python benchmarks/bench_notebooks.py                  # workshop profile, all notebooks
    python benchmarks/bench_notebooks.py --profile quick notebooks/01_data_loading.ipynb

Prints the table and the seconds per section (the instructor guide's schedule), and writes
build/benchmarks/notebooks.json (plus the executed notebooks under
build/bench_notebooks/PROFILE/). The load average before and after is recorded: on a
shared machine the figures are upper bounds.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

from _common import OUT_DIR, ROOT, write_json

from mstoolkit.course.runner import print_section_timings, run_notebooks

BINDER_LIMIT_MB = 2048


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="notebook files (default: all)")
    parser.add_argument("--profile", default="workshop", choices=["quick", "workshop", "full"])
    parser.add_argument("--timeout", type=int, default=3600, help="seconds allowed per notebook")
    parser.add_argument("--out", default=str(OUT_DIR / "notebooks.json"))
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    summary = run_notebooks(
        args.notebooks or None,
        profile=args.profile,
        out_dir=ROOT / "build" / "bench_notebooks" / args.profile,
        timeout=args.timeout,
        html=False,
    )
    rows = [
        {
            "notebook": r["notebook"],
            "status": r["status"],
            "minutes": round(r["seconds"] / 60, 2),
            "peak_memory_mb": r["peak_memory_mb"],
            "within_binder_2gb": r["peak_memory_mb"] <= BINDER_LIMIT_MB,
            "sections": r.get("sections", []),
        }
        for r in summary["notebooks"]
    ]
    print(f"profile {args.profile} on {platform.machine()} with {os.cpu_count()} cores")
    print(f"{'notebook':<40} {'status':<8} {'minutes':>8} {'peak MB':>8}  ≤ 2 GB")
    for row in rows:
        print(f"{row['notebook']:<40} {row['status']:<8} {row['minutes']:>8.2f} {row['peak_memory_mb']:>8.0f}  "
              f"{'yes' if row['within_binder_2gb'] else 'NO'}")
    total = sum(r["minutes"] for r in rows)
    print(f"total {total:.1f} min; largest peak {max(r['peak_memory_mb'] for r in rows):.0f} MB")
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"load average (1 min) before {load_before}, after {load_after}: above {os.cpu_count()} the machine was shared")
    print_section_timings(summary)

    result = {
        "profile": args.profile,
        "cpu_cores": os.cpu_count(),
        "versions": summary["versions"],
        "total_minutes": round(total, 2),
        "load_average": {"before": load_before, "after": load_after},
        "notebooks": rows,
    }
    write_json("notebooks", result, path=args.out)
    # Binder's 2 GB matters for the workshop profile; quick and full are not run there.
    ok = all(r["status"] == "ok" for r in rows) and (args.profile != "workshop" or all(r["within_binder_2gb"] for r in rows))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
