"""From a DICOM study to a report, a DICOM SEG overlay and a structured report: ``mstoolkit study``.

The steps a radiology department needs, each done by the module that owns it:

1. **Find the series** in a folder of DICOM files, whatever their names
   (:func:`mstoolkit.clinical.dicom_series.find_series`).
2. **Identify the sequences** from their headers: which series is the FLAIR, the T1, ...
   (:func:`mstoolkit.clinical.sequences.identify_all`); an ambiguous study stops here
   with the candidates listed, and ``--series ROLE=UID`` decides.
3. **Convert** the chosen series to the toolkit's RAS+ images and keep them as NIfTI
   (``inputs/FLAIR.nii.gz`` ...), so every later step can be rerun and checked.
4. **Segment** with the same code as ``mstoolkit segment``
   (:func:`mstoolkit.segmentation.inference.segment_files`: skull stripping, the T1
   registered to the FLAIR, the reference model).
5. **Compare with the prior study**, when one is given, with the longitudinal module
   (:func:`mstoolkit.longitudinal.change.longitudinal_files`): new and enlarging lesions.
6. **Report**: lesion load, McDonald locations, dissemination in space (and in time with a
   prior), a lesion-load percentile (:mod:`mstoolkit.clinical.report`), as ``report.json``
   and a self-contained ``report.html``.
7. **DICOM out**: the lesion mask as a DICOM Segmentation on the FLAIR and a TID 1500
   measurement report that references it (:mod:`mstoolkit.clinical.dicom_out`).
8. **Send** both to a PACS with C-STORE, after a C-ECHO checked at the start that the PACS
   answers (:mod:`mstoolkit.clinical.pacs`).

``mstoolkit listen`` runs the same pipeline on every study a scanner or PACS sends to it.

Nothing here is certified for clinical use: the outputs say so, and the model card lists
the model's limits. Messages name series by number and description, never by patient data.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pydicom

from mstoolkit.clinical.dicom_series import DicomSeries, find_series, load_series
from mstoolkit.data.io import MSToolkitInputError, write_atomic

__all__ = ["LIMITATIONS", "run_study", "study_series", "protocol_mismatch", "cli_study", "cli_listen"]

log = logging.getLogger(__name__)

#: The model card's limits, in the words a report reader needs (MODEL_CARD.md, "Limitations").
LIMITATIONS = (
    "The reference model is a small U-Net trained on synthetic phantom scans only; on real scans it "
    "finds fewer lesions and draws them less exactly than on the phantom (see the model card's "
    "evaluation). Small lesions (under about 10 mm³), cortical lesions (invisible on FLAIR at 1.5 and 3 T) "
    "and lesions of the spinal cord (not imaged) are missed. Locations come from an affine registration "
    "to the MNI template, which is coarse near the cortex and the brainstem. The percentile compares with "
    "28 MS patients of one centre, not with healthy people. Research and teaching software: not for "
    "clinical use; a radiologist reads the images."
)


def study_series(folder: str | os.PathLike, *, what: str = "the study") -> list[DicomSeries]:
    """The series of the one study in ``folder``; a folder holding none or several studies is refused."""
    found = find_series(folder)
    if not found.series:
        raise MSToolkitInputError(f"No DICOM image series found in {what} ({found.n_skipped} other file(s) skipped): "
                                  "pass the folder of a DICOM export or CD.")
    studies: dict[str, list[DicomSeries]] = {}
    for series in found.series:
        studies.setdefault(series.study_uid, []).append(series)
    if len(studies) > 1:
        listing = "; ".join(f"study {uid} ({len(s)} series)" for uid, s in studies.items())
        raise MSToolkitInputError(f"{what.capitalize()} folder holds {len(studies)} studies ({listing}): "
                                  "pass the folder of one study (and an earlier one with --prior).")
    return next(iter(studies.values()))


def _save_series(series: DicomSeries, path: Path) -> tuple[np.ndarray, np.ndarray]:
    from mstoolkit.data.io import save_image

    image, affine = load_series(series)
    save_image(path, image, affine)
    return image, affine


def _prior_changes(prior: str | os.PathLike, flair_path: Path, current_flair: DicomSeries,
                   current_spacing: Sequence[float], out_dir: Path, overrides: Mapping[str, str]) -> dict[str, Any]:
    """Compare the prior study's FLAIR with this study's: new and enlarging lesion counts."""
    from mstoolkit.clinical.sequences import choose_series, identify_all
    from mstoolkit.data.io import spacing_from_affine
    from mstoolkit.longitudinal.change import longitudinal_files

    prior_series = study_series(prior, what="the prior study")
    # A UID given with --series belongs to the current study; the prior's FLAIR is found again.
    prior_overrides = {role: uid for role, uid in overrides.items() if any(s.series_uid == uid for s in prior_series)}
    chosen = choose_series(identify_all(prior_series), ["FLAIR"], overrides=prior_overrides)
    (out_dir / "inputs").mkdir(parents=True, exist_ok=True)
    prior_flair = out_dir / "inputs" / "prior_FLAIR.nii.gz"
    _, prior_affine = _save_series(chosen["FLAIR"], prior_flair)
    prior_spacing = spacing_from_affine(prior_affine)
    change_dir = out_dir / "longitudinal"
    change_dir.mkdir(exist_ok=True)
    change = longitudinal_files(prior_flair, flair_path, change_dir)
    counts = change["counts"]
    changes = {"new_lesions": counts["new"], "enlarging_lesions": counts["enlarging"],
               "shrinking_lesions": counts["shrinking_or_resolved"], "prior_series": chosen["FLAIR"].label,
               "registration_quality": change["registration"]["quality_correlation_in_brain"],
               "method": "mstoolkit longitudinal (FLAIR change map), outputs in longitudinal/"}
    warning = protocol_mismatch(chosen["FLAIR"], current_flair, prior_spacing, current_spacing)
    if warning:
        changes["warning"] = warning
    return changes


def protocol_mismatch(prior: DicomSeries, current: DicomSeries, prior_spacing: Sequence[float],
                      current_spacing: Sequence[float]) -> str | None:
    """Why counts of new lesions between these two FLAIRs are unreliable, or None.

    A new lesion is a difference between two scans, so every difference of protocol
    (slice thickness, 2D or 3D, vendor) shows up as false "new" lesions at the edges of real
    ones and of the ventricles. The MAGNIMS-CMSC-NAIMS 2021 recommendations (Wattjes et al.,
    Lancet Neurol 2021;20:653-670) ask for the same 3D FLAIR protocol at every follow-up.

    >>> from pathlib import Path
    >>> axial = DicomSeries("1", "2", 5, "MR", "Ax T2 FLAIR", "", 9000.0, 120.0, 2250.0, "IR", "SK", "", "2D", "", "", ())
    >>> protocol_mismatch(axial, axial, (1.0, 1.0, 4.5), (1.0, 1.0, 4.5)) is None
    True
    >>> protocol_mismatch(axial, axial, (1.0, 1.0, 4.5), (1.0, 1.0, 1.0)).split(":")[0]
    'The prior and current FLAIRs differ in voxel size (1.0 x 1.0 x 4.5 mm vs 1.0 x 1.0 x 1.0 mm)'
    """
    differences = []
    if not np.allclose(sorted(prior_spacing), sorted(current_spacing), rtol=0.2):
        differences.append("voxel size ({} mm vs {} mm)".format(*(" x ".join(f"{v:.1f}" for v in s)
                                                                  for s in (prior_spacing, current_spacing))))
    if prior.mr_acquisition_type and current.mr_acquisition_type and prior.mr_acquisition_type != current.mr_acquisition_type:
        differences.append(f"acquisition ({prior.mr_acquisition_type} vs {current.mr_acquisition_type})")
    if prior.manufacturer and current.manufacturer and prior.manufacturer.lower() != current.manufacturer.lower():
        differences.append(f"scanner vendor ({prior.manufacturer} vs {current.manufacturer})")
    if not differences:
        return None
    return (f"The prior and current FLAIRs differ in {', '.join(differences)}: counts of new and enlarging lesions "
            "between different protocols include false changes; read them against the images (the MAGNIMS-CMSC-NAIMS "
            "2021 recommendations ask for the same 3D FLAIR protocol at follow-up).")


def run_study(
    dicom_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    prior: str | os.PathLike | None = None,
    pacs: str | None = None,
    calling_aet: str = "MSTOOLKIT",
    series: Sequence[str] | Mapping[str, str] | None = None,
    model: str | os.PathLike = "reference",
    device: str = "auto",
) -> dict[str, Any]:
    """Run the whole pipeline on one DICOM study; write every output into ``out_dir``.

    Parameters
    ----------
    dicom_dir : folder of the study's DICOM files (any names, any depth)
    out_dir : where ``series.json``, ``inputs/``, ``lesion_mask.nii.gz``, ``lesion_probability.nii.gz``,
        ``lesion_seg.dcm``, ``report_sr.dcm``, ``report.json`` and ``report.html`` go
    prior : folder of the patient's previous study, to count new and enlarging lesions
    pacs : ``AET@HOST:PORT`` of a PACS: checked with C-ECHO first, then sent the SEG and SR
    series : ``["FLAIR=<SeriesInstanceUID>", ...]`` (or a dict) where identification is ambiguous
    model, device : as for ``mstoolkit segment``

    Returns the report (the content of ``report.json``).
    """
    from mstoolkit import __version__
    from mstoolkit.clinical.dicom_out import write_measurement_report, write_segmentation
    from mstoolkit.clinical.report import build_report, write_report_html
    from mstoolkit.clinical.sequences import choose_series, identify_all, parse_series_overrides, series_table
    from mstoolkit.data.io import load_image, load_mask, spacing_from_affine
    from mstoolkit.segmentation.inference import segment_files
    from mstoolkit.segmentation.models import load_model

    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(step: str, since: float) -> float:
        now = time.perf_counter()
        timings[step] = round(now - since, 2)
        return now

    overrides = dict(series) if isinstance(series, Mapping) else parse_series_overrides(series)
    pacs_address = None
    if pacs:
        from mstoolkit.clinical.pacs import echo, parse_pacs_address

        pacs_address = parse_pacs_address(pacs)
        echo(pacs_address, calling_aet=calling_aet)  # before the work, so a wrong address fails in seconds
    _, config = load_model(model, device="cpu")  # which sequences the model needs (and a bad --model fails early)
    needed = list(config["sequences"])

    t = time.perf_counter()
    current = study_series(dicom_dir)
    roles = identify_all(current)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "series.json", json.dumps(series_table(roles), indent=2))
    chosen = choose_series(roles, needed, overrides=overrides)
    t = lap("identify", t)

    (out / "inputs").mkdir(exist_ok=True)
    input_paths = {}
    for role, chosen_series in chosen.items():
        input_paths[role] = out / "inputs" / f"{role}.nii.gz"
        image, image_affine = _save_series(chosen_series, input_paths[role])
        if role == "FLAIR":
            flair, affine = image, image_affine  # kept for the report; the others are only needed on disk
        del image
    t = lap("convert", t)

    segmentation = segment_files(input_paths["FLAIR"], out, t1=input_paths.get("T1"), t2=input_paths.get("T2"),
                                 model=model, device=device, skull_strip=True, register=True)
    t = lap("segment", t)

    changes = _prior_changes(prior, input_paths["FLAIR"], chosen["FLAIR"], spacing_from_affine(affine), out,
                             overrides) if prior is not None else None
    if changes is not None:
        t = lap("compare_with_prior", t)

    mask, _ = load_mask(out / "lesion_mask.nii.gz")
    probability, _ = load_image(out / "lesion_probability.nii.gz")
    # Sex (not an identifier) puts the lesion load among patients of the same sex too.
    patient_sex = str(pydicom.dcmread(chosen["FLAIR"].files[0], stop_before_pixels=True).get("PatientSex", "") or "")
    report = build_report(mask, probability, affine, flair, changes=changes, model=segmentation["model"],
                          patient_sex=patient_sex)
    report["series_used"] = {role: {"series_instance_uid": s.series_uid, "series": s.label} for role, s in chosen.items()}
    report["segmentation_settings"] = segmentation["settings"]
    report["mstoolkit_version"] = __version__
    report["not_for_clinical_use"] = True
    t = lap("report", t)

    seg_path = write_segmentation(mask, affine, chosen["FLAIR"], out / "lesion_seg.dcm",
                                  model_version=str(segmentation["model"]["version"]))
    sr_path = write_measurement_report(report, seg_path, chosen["FLAIR"], out / "report_sr.dcm")
    t = lap("dicom_out", t)

    if pacs_address is not None:
        from mstoolkit.clinical.pacs import send

        stored = send(pacs_address, [seg_path, sr_path], calling_aet=calling_aet)
        report["pacs"] = {"address": str(pacs_address), "stored": stored}
        t = lap("send", t)

    report["seconds"] = {**timings, "total": round(time.perf_counter() - started, 2)}
    write_atomic(out / "report.json", json.dumps(report, indent=2))
    write_report_html(report, flair, mask, affine, out / "report.html", limitations=LIMITATIONS)
    return report


def _summary(report: Mapping[str, Any]) -> str:
    text = (f"{report['lesion_count']} lesion(s), {report['total_lesion_volume_ml']:.2f} mL; "
            f"dissemination in space: {'yes' if report['dissemination_in_space']['met'] else 'no'}")
    if "new_lesions" in report:
        text += f"; {report['new_lesions']} new, {report['enlarging_lesions']} enlarging since the prior"
    if "pacs" in report:
        text += f"; SEG and SR stored at {report['pacs']['address']}"
    return text + f" ({report['seconds']['total']:.0f} s)"


def cli_study(args) -> int:
    """``mstoolkit study DICOM_DIR --out DIR``: the whole pipeline on one study."""
    report = run_study(args.dicom_dir, args.out, prior=args.prior, pacs=args.pacs, calling_aet=args.calling_aet,
                       series=args.series, model=args.model, device=args.device)
    print(f"{_summary(report)}. Wrote series.json, inputs/, lesion_mask.nii.gz, lesion_probability.nii.gz, "
          f"lesion_seg.dcm, report_sr.dcm, report.json and report.html to {args.out}")
    return 0


def cli_listen(args) -> int:
    """``mstoolkit listen --port P --out DIR``: receive studies, run the pipeline on each, send results back."""
    from mstoolkit.clinical.pacs import StudyListener, echo, parse_pacs_address

    # One INFO line per received image drowns the study lines; pynetdicom's debug log prints datasets.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    if args.pacs:
        echo(parse_pacs_address(args.pacs), calling_aet=args.ae_title)
    results = Path(args.out) / "results"

    def on_study(folder: Path) -> None:
        report = run_study(folder, results / folder.name, pacs=args.pacs, calling_aet=args.ae_title,
                           model=args.model, device=args.device)
        print(f"study {folder.name}: {_summary(report)}", flush=True)

    listener = StudyListener(Path(args.out) / "incoming", port=args.port, ae_title=args.ae_title, host=args.host,
                             idle_seconds=args.idle_seconds, on_study=on_study)
    listener.serve_until_interrupted()
    return 0
