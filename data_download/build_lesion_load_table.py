"""Build the lesion-load table of the open_ms_data cohort that the structured report compares with.

Reads the consensus lesion masks of the cross-sectional database in MNI space
(``cross_sectional/MNI/patientNN/GOLD_STANDARD_…nii.gz``) and ``patient_info.csv`` (age, sex, MS
type), and writes one row per patient into the package,
``mstoolkit/clinical/reference/open_ms_data_lesion_load.csv``. It runs once, by a
maintainer; at run time the report reads only that small table (a user's clone has no masks).

Volumes are compared in template space. The upstream "MNI" images are smaller than the MNI152 2009
template the report registers to (an affine registration of the upstream FLAIR of patient26 to the
template scales volumes by ~1.6), so each mask's volume is multiplied by that factor, measured here
on patient26 with :func:`mstoolkit.clinical.report.register_to_mni`, the same registration a
subject gets. The table keeps the upstream volume as well.

Data: Lesjak et al., Neuroinformatics 16, 51–63 (2018), CC-BY.

    python data_download/build_lesion_load_table.py [OPEN_MS_DATA_FOLDER]   (default ../shared/data/open_ms_data)
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np

from mstoolkit.clinical.report import COHORT_TABLE, register_to_mni
from mstoolkit.data.io import MSToolkitInputError, load_image, load_mask, spacing_from_affine, write_atomic
from mstoolkit.evaluation.metrics import label_lesions

REPOSITORY = Path(__file__).resolve().parents[1]
MASK_GLOB = "GOLD_STANDARD_*.nii.gz"
CALIBRATION_FLAIR = "patient26/FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"


def template_scale(mni_folder: Path) -> float:
    """Volume scale from the upstream MNI space to the MNI152 2009 template, measured on patient26's FLAIR."""
    flair_path = mni_folder / CALIBRATION_FLAIR
    if not flair_path.is_file():
        raise MSToolkitInputError(f"{flair_path} is missing: the table needs patient26's MNI FLAIR to relate the upstream space to the template.")
    flair, affine = load_image(flair_path)
    return float(register_to_mni(flair, affine)["mni_volume_scale"])


def build_table(folder: Path) -> str:
    """The CSV text of the lesion-load table of the open_ms_data folder ``folder``."""
    mni_folder = folder / "cross_sectional" / "MNI"
    info_path = folder / "cross_sectional" / "patient_info.csv"
    if not info_path.is_file():
        raise MSToolkitInputError(f"{info_path} is missing: pass the open_ms_data folder (with cross_sectional/patient_info.csv).")
    with open(info_path, newline="", encoding="utf-8") as handle:
        info = {int(row["patient_id"]): row for row in csv.DictReader(handle)}
    scale = template_scale(mni_folder)
    rows, missing = [], []
    for patient in sorted(info):
        masks = sorted((mni_folder / f"patient{patient:02d}").glob(MASK_GLOB))
        if not masks:
            missing.append(f"patient{patient:02d}")
            continue
        mask, affine = load_mask(masks[0])
        spacing = spacing_from_affine(affine)
        volume_ml = float(mask.sum()) * float(np.prod(spacing)) / 1000.0
        _, count = label_lesions(mask, spacing=spacing, connectivity=26)
        row = info[patient]
        rows.append([f"patient{patient:02d}", f"{volume_ml * scale:.3f}", f"{volume_ml:.3f}", count, row["age"], row["sex"], row["ms_type"]])
        print(f"patient{patient:02d}: {volume_ml:.2f} mL upstream, {volume_ml * scale:.2f} mL in template space, {count} lesions")
    if not rows:
        raise MSToolkitInputError(f"no consensus masks ({MASK_GLOB}) under {mni_folder}: pass the open_ms_data folder.")
    out = io.StringIO()
    out.write("# Lesion load of the open_ms_data cross-sectional cohort (MS patients, not healthy norms), built by\n"
              "# data_download/build_lesion_load_table.py from the consensus masks in MNI space.\n"
              f"# {len(rows)} of {len(info)} patients; no consensus mask: {', '.join(missing) or 'none'}.\n"
              f"# lesion_volume_ml_mni = upstream MNI volume x {scale:.4f} (upstream MNI space -> MNI152 2009 template, "
              "affine registration of patient26's FLAIR); lesion_count: 26-connected components.\n"
              "# Data: Lesjak et al., Neuroinformatics 16, 51-63 (2018), DOI 10.1007/s12021-017-9348-7, CC-BY.\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["patient_id", "lesion_volume_ml_mni", "lesion_volume_ml_upstream", "lesion_count", "age", "sex", "ms_type"])
    writer.writerows(rows)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=str(REPOSITORY.parent / "shared" / "data" / "open_ms_data"),
                        help="the open_ms_data folder (default: ../shared/data/open_ms_data from the repository root)")
    parser.add_argument("--out", default=str(COHORT_TABLE), help="where to write the table (default: the package's mstoolkit/clinical/reference/)")
    args = parser.parse_args(argv)
    try:
        text = build_table(Path(args.folder))
    except MSToolkitInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {write_atomic(args.out, text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
