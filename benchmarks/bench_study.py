"""Benchmark `mstoolkit study`: seconds from a DICOM folder to the report, and peak memory, on CPU.

The studies are the teaching studies of ``mstoolkit data dicom`` (phantom, with a prior
study, and the shipped real patient26 of open_ms_data, Lesjak et al. 2018, CC-BY). Each run is
the CLI in a fresh process, so its seconds include Python start-up, reading the DICOM files,
segmentation, the MNI registration for the McDonald locations, the report and the DICOM SEG
and SR; its peak memory is its own. The target is 60 s per study on a 2-core CPU.

Run: python benchmarks/bench_study.py [--threads 2]
Writes build/benchmarks/study.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import machine, run_cli, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from mstoolkit.clinical.scanner_export import write_teaching_studies

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        written = write_teaching_studies(tmp / "dicom", source="all", seed=0)
        print(f"teaching studies written in {time.perf_counter() - started:.1f} s")
        studies = {(s["patient"], s["kind"]): Path(s["folder"]) for s in written["studies"]}
        runs = [("patient26 (real, one study)", studies[("patient26", "cross-sectional")], None),
                ("phantom, current study", studies[("phantom", "current")], None),
                ("phantom, current study with --prior", studies[("phantom", "current")], studies[("phantom", "prior")])]
        for name, folder, prior in runs:
            out = tmp / "out" / name.split()[0] / ("prior" if prior else "alone")
            arguments = [str(folder), "--out", str(out)] + (["--prior", str(prior)] if prior else [])
            seconds, peak_mb = run_cli(["study", *arguments, "--device", "cpu"], args.threads)
            report = json.loads((out / "report.json").read_text())
            rows.append({"study": name, "seconds": round(seconds, 1), "peak_mb": round(peak_mb),
                         "steps_seconds": report["seconds"], "lesion_count": report["lesion_count"],
                         "total_lesion_volume_ml": report["total_lesion_volume_ml"]})
            print(f"{name}: {seconds:.1f} s, peak {peak_mb:.0f} MB, {report['lesion_count']} lesion(s); "
                  f"steps {report['seconds']}")
    write_json("study", {"threads": args.threads, "machine": machine(), "target_seconds": 60, "runs": rows})


if __name__ == "__main__":
    main()
