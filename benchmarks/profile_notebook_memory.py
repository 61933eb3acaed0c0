"""Which cells of a notebook use the memory: resident and peak memory after every code cell.

Binder gives a notebook's kernel 2 GB. When a notebook's peak (see
bench_notebooks.py) comes close, this shows which cell raises it: each code cell
gets one extra line that prints the kernel's resident memory and its peak so far,
then the notebook runs with papermill at the chosen profile.

    python benchmarks/profile_notebook_memory.py notebooks/06_uncertainty.ipynb
    python benchmarks/profile_notebook_memory.py notebooks/03_unet_training.ipynb --profile quick

Prints one row per code cell: peak so far (MB), resident after the cell (MB), how
much the cell raised the peak, and the cell's first line.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

from _common import ROOT

MARKER = "__MEMORY__"
PROBE_LINE = re.compile(MARKER + r" (\d+) (\d+) (\d+)")
# Appended to each code cell; ru_maxrss is the kernel's own peak (KiB on Linux), statm field 1 its resident pages.
PROBE = (
    "\nimport os as _os, resource as _resource\n"
    "print('{marker}', {index}, _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss // 1024, "
    "int(open('/proc/self/statm').read().split()[1]) * _os.sysconf('SC_PAGE_SIZE') // 2**20)\n"
)


def main(argv: list[str] | None = None) -> int:
    import nbformat
    import papermill

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--profile", default="workshop", choices=["quick", "workshop", "full"])
    args = parser.parse_args(argv)
    if not Path("/proc/self/statm").exists():
        raise SystemExit("This profiler reads /proc/self/statm: run it on Linux (Binder, Colab, a Linux laptop).")

    notebook = nbformat.read(args.notebook, as_version=4)
    first_lines = {}
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code" and "parameters" not in cell.metadata.get("tags", []):
            first_lines[index] = next((line for line in cell.source.splitlines() if line.strip()), "")[:60]
            cell.source += PROBE.format(marker=MARKER, index=index)
    with tempfile.TemporaryDirectory() as tmp:
        probed, executed = Path(tmp) / "probed.ipynb", Path(tmp) / "executed.ipynb"
        nbformat.write(notebook, probed)
        papermill.execute_notebook(str(probed), str(executed), kernel_name="python3", cwd=str(args.notebook.resolve().parent),
                                   parameters={"PROFILE": args.profile, "OUTPUT_DIR": str(ROOT / "build" / "profile_memory")},
                                   progress_bar=False)
        ran = nbformat.read(executed, as_version=4)

    print(f"{args.notebook.name} at profile {args.profile}")
    print(f"{'cell':>4} {'peak MB':>8} {'now MB':>7} {'+peak':>6}  first line")
    previous_peak = 0
    for cell in ran.cells:
        # A cell's stdout can arrive in several stream outputs, split anywhere (even inside the
        # probe's line), and the cell's own output may not end in a newline: join, then search.
        stdout = "".join(output.get("text", "") for output in cell.get("outputs", []) if output.get("name") == "stdout")
        for index, peak, now in PROBE_LINE.findall(stdout):
            peak, now = int(peak), int(now)
            print(f"{index:>4} {peak:>8} {now:>7} {peak - previous_peak:>+6}  {first_lines[int(index)]}")
            previous_peak = peak
    return 0


if __name__ == "__main__":
    sys.exit(main())
