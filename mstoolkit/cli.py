"""The ``mstoolkit`` command line.

Each subcommand parses its options here and hands them to one function of the
module that does the work (``run_cli(args) -> int`` style functions named
``cli_<command>``), imported only when that command runs so ``mstoolkit --help``
stays fast.

Run ``mstoolkit --help`` or ``mstoolkit COMMAND --help``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mstoolkit import __version__
from mstoolkit.data.io import MSToolkitInputError

__all__ = ["main", "build_parser"]


def _handler(module: str, function: str):
    """Defer the (heavy) import of a command's module until the command runs."""

    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(f"mstoolkit.{module}"), function)(args)

    return run


def _add_doctor(sub) -> None:
    p = sub.add_parser("doctor", help="print versions, GPU/CPU, data found, Colab/Binder detection")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=_handler("doctor", "cli_doctor"))


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="generate the phantom, list/download/import public datasets")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="{phantom,prepare,list,download,import,dicom}")

    p = dsub.add_parser("prepare", help="build the phantom data the notebooks use (before a workshop, on Binder)")
    p.add_argument("--profile", default="workshop", choices=["quick", "workshop", "full"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_handler("phantom.dataset", "cli_prepare"))

    p = dsub.add_parser("phantom", help="generate the synthetic MS phantom dataset")
    p.add_argument("--out", required=True, help="output folder (BIDS-like layout)")
    p.add_argument("--n", type=int, default=4, help="number of subjects (default 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--longitudinal", action="store_true", help="two sessions per subject with a change mask")
    p.add_argument("--profile", default=None, help="scanner profile for every subject (default: mixed)")
    p.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="resample to this voxel size in mm, e.g. 1 1 3 for a 2D-FLAIR-like scan")
    p.add_argument("--t1ce", action="store_true", help="also write a gadolinium-enhanced T1 (T1CE)")
    p.add_argument("--raw", action="store_true", help="also write the 'raw' scan: skull on, bias, non-RAS, anisotropic")
    p.set_defaults(run=_handler("phantom.dataset", "cli_phantom"))

    p = dsub.add_parser("list", help="list the datasets the toolkit knows")
    p.set_defaults(run=_handler("data.commands", "cli_list"))

    p = dsub.add_parser("download", help="download a public dataset (checksummed, resumable)")
    p.add_argument("name", help="dataset name, see `mstoolkit data list`")
    p.add_argument("--dest", default=None, help="destination folder (default: $MSTOOLKIT_DATA/NAME)")
    p.add_argument("--subset", nargs="+", default=None,
                   help="open_ms_data: cross_sectional_mni (default), cross_sectional_coregistered, "
                        "cross_sectional_coregistered_resampled, cross_sectional_raw, longitudinal_coregistered, "
                        "longitudinal_raw, or all")
    p.add_argument("--patients", nargs="+", default=None, help="patient numbers to fetch, e.g. 7 26 or patient07")
    p.add_argument("--mirror", default=None, help="base URL replacing the upstream one (http(s):// or file://)")
    p.add_argument("--no-convert", action="store_true", help="keep the upstream layout only")
    p.set_defaults(run=_handler("data.commands", "cli_download"))

    p = dsub.add_parser("dicom", help="write phantom and real-sample studies as scanner-like DICOM (ground truth kept apart)")
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    p.add_argument("--source", choices=("phantom", "real", "all"), default="all", help="which studies to write (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the phantom patient (default: 0)")
    p.set_defaults(run=_handler("clinical.scanner_export", "cli_data_dicom"))

    p = dsub.add_parser("import", help="convert a dataset you downloaded yourself (registration-only datasets)")
    p.add_argument("name", help="dataset name, see `mstoolkit data list`")
    p.add_argument("path", help="the archive or folder you downloaded")
    p.add_argument("--dest", required=True, help="destination folder")
    p.set_defaults(run=_handler("data.commands", "cli_import"))


def _add_notebooks(sub) -> None:
    nb = sub.add_parser("notebooks", help="run the notebooks with papermill, or make student versions")
    nsub = nb.add_subparsers(dest="notebooks_command", required=True, metavar="{run,student,timings}")
    p = nsub.add_parser("run", help="execute notebooks, write executed copies, HTML and summary.json")
    p.add_argument("notebooks", nargs="*", help="notebook files (default: all in notebooks/)")
    p.add_argument("--profile", default="quick", choices=["quick", "workshop", "full"])
    p.add_argument("--out", default="build", help="output folder (default build/)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds allowed per notebook")
    p.add_argument("--data-dir", default=None, help="DATA_DIR passed to every notebook")
    p.add_argument("--dataset", default=None, help="DATASET passed to every notebook (e.g. open_ms_data)")
    p.add_argument("--no-html", action="store_true", help="skip the HTML export")
    p.add_argument("--version", default="original", choices=["original", "student", "both"],
                   help="run the notebooks as written, their student versions, or both paths of every exercise")
    p.set_defaults(run=_handler("course.runner", "cli_run"))
    p = nsub.add_parser("student", help="write student versions (solutions removed)")
    p.add_argument("notebooks", nargs="*", help="notebook files (default: all in notebooks/)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(run=_handler("course.runner", "cli_student"))
    p = nsub.add_parser("timings", help="print seconds per notebook section from a run's summary.json")
    p.add_argument("summary", help="the summary.json that `mstoolkit notebooks run` wrote")
    p.set_defaults(run=_handler("course.runner", "cli_timings"))


def _add_preprocess(sub) -> None:
    p = sub.add_parser("preprocess", help="N4, skull strip, normalise, resample, register one image")
    p.add_argument("input", help="input .nii.gz")
    p.add_argument("--out", required=True, help="output .nii.gz")
    p.add_argument("--reference", default=None, help="register INPUT to this image and write on its grid")
    p.add_argument("--affine", action="store_true", help="affine instead of rigid registration")
    p.add_argument("--n4", action="store_true", help="N4 bias-field correction")
    p.add_argument("--skull-strip", action="store_true", help="atlas-based skull stripping")
    p.add_argument("--normalize", choices=["zscore", "percentile", "nyul"], default=None,
                   help="intensity normalisation (within the brain mask with --skull-strip)")
    p.add_argument("--landmarks", default=None,
                   help="JSON file with {\"landmarks\": [...]} from normalization.nyul_landmarks (for --normalize nyul)")
    p.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="resample to this voxel size in mm (not with --reference)")
    p.set_defaults(run=_handler("preprocessing.preprocess", "cli_preprocess"))


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a segmentation model")
    p.add_argument("--preset", default="workshop", help="quick, workshop, full, reference or reference_v2")
    p.add_argument("--data", default=None, help="dataset folder (default: generate the phantom)")
    p.add_argument("--out", required=True, help="output folder for checkpoints and history")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ensemble", type=int, default=1, help="train K members with seeds seed..seed+K-1")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.set_defaults(run=_handler("segmentation.train", "cli_train"))


def _add_segment(sub) -> None:
    p = sub.add_parser("segment", help="segment MS lesions in one scan")
    p.add_argument("--flair", required=True, help="FLAIR .nii.gz")
    p.add_argument("--t1", default=None)
    p.add_argument("--t2", default=None)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default="reference", help="'reference', 'reference-v2' (MODEL_CARD.md) or a checkpoint path")
    p.add_argument("--device", default="auto")
    p.add_argument("--skull-strip", action="store_true", help="skull-strip the inputs first")
    p.add_argument("--register", action="store_true", help="register T1/T2 to the FLAIR first")
    p.add_argument("--threshold", type=float, default=None, help="probability cut-off (default: the model's, else 0.5)")
    p.add_argument("--min-lesion-mm3", type=float, default=None,
                   help="drop lesions smaller than this (default: the model's own, chosen on validation data; 0 keeps all)")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    p.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="arithmetic; auto: bfloat16 on CPUs that multiply it in hardware (same mask to Dice >= 0.999), "
                        "else float32")
    p.set_defaults(run=_handler("segmentation.inference", "cli_segment"))


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="compare a segmentation with the ground truth")
    p.add_argument("--pred", default=None, help="predicted mask .nii.gz")
    p.add_argument("--truth", default=None, help="ground-truth mask .nii.gz")
    p.add_argument("--pred-dir", default=None, help="folder of predicted masks (cohort)")
    p.add_argument("--truth-dir", default=None, help="folder of ground-truth masks (cohort)")
    p.add_argument("--brain-mask", default=None)
    p.add_argument("--matching", default="any_overlap", choices=["any_overlap", "iou", "anima"])
    p.add_argument("--connectivity", type=int, default=26, choices=[6, 18, 26])
    p.add_argument("--min-lesion-mm3", type=float, default=0.0)
    p.add_argument("--hd-mode", default="max_directed", choices=["max_directed", "pooled"])
    p.add_argument("--json", action="store_true", help="print JSON (one pair)")
    p.add_argument("--out", default=None, help="write the result here (cohort: CSV; one pair: text, or JSON with --json)")
    p.set_defaults(run=_handler("evaluation.report", "cli_evaluate"))


def _add_longitudinal(sub) -> None:
    p = sub.add_parser("longitudinal", help="new, enlarging and shrinking lesions between two scans")
    p.add_argument("--baseline", required=True, help="baseline (earlier) FLAIR .nii.gz")
    p.add_argument("--followup", required=True, help="follow-up (later) FLAIR .nii.gz; the outputs use its grid")
    p.add_argument("--baseline-t1", default=None, help="baseline T1 (for the segmentation model)")
    p.add_argument("--followup-t1", default=None, help="follow-up T1 (for the segmentation model)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--registered", action="store_true",
                   help="both scans already share one grid: register nothing, refuse different grids")
    p.add_argument("--skull-stripped", action="store_true",
                   help="the scans are already skull stripped (brain = non-zero voxels); default: atlas skull stripping")
    p.add_argument("--model", default="none",
                   help="'none' (FLAIR intensity only; the default, best on the phantom selection pairs), 'reference' or a checkpoint path")
    p.add_argument("--method", choices=("statistical", "learned"), default="statistical",
                   help="what decides growth: the statistical change map (default) or the change network trained on phantom pairs")
    p.add_argument("--change-model", default=None,
                   help="with --method learned: a checkpoint from benchmarks/train_change_model.py (default: the shipped one)")
    p.add_argument("--change-z", type=float, default=None,
                   help="scaled difference above which a voxel has changed (default: the package's DEFAULT_CHANGE_Z, 5)")
    p.add_argument("--hyperintensity-z", type=float, default=None,
                   help="robust FLAIR z-score above which tissue is lesion-like (default: DEFAULT_HYPERINTENSITY_Z, 2.5)")
    p.add_argument("--gate", choices=("voxel", "component"), default=None,
                   help="how FLAIR brightness gates the change map: changed voxels that are bright themselves (voxel), or "
                        "whole changed components with a bright voxel (component); default: the package's DEFAULT_GATE")
    p.add_argument("--min-size-mm3", type=float, default=3.0,
                   help="ignore changes smaller than this (default 3 mm³, as anima / MSSEG-2)")
    p.add_argument("--enlarging-ratio", type=float, default=1.5,
                   help="volume ratio that makes a lesion enlarging (default 1.5: 50%% growth, Goodkin et al. 1992)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.set_defaults(run=_handler("longitudinal.change", "cli_longitudinal"))


def _add_study(sub) -> None:
    p = sub.add_parser("study", help="a DICOM study in: series identified, segmented, report, DICOM SEG and SR out (and to a PACS)")
    p.add_argument("dicom_dir", help="folder of the study's DICOM files (any file names, any depth)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--prior", default=None, help="folder of the patient's previous study: new and enlarging lesions")
    p.add_argument("--pacs", default=None, metavar="AET@HOST:PORT", help="send the SEG and SR to this PACS (checked with C-ECHO first)")
    p.add_argument("--calling-aet", default="MSTOOLKIT", help="our AE title towards the PACS (default MSTOOLKIT)")
    p.add_argument("--series", action="append", default=None, metavar="ROLE=UID",
                   help="use this series for ROLE (FLAIR, T1, T1CE, T2) where identification is ambiguous; repeatable")
    p.add_argument("--model", default="reference", help="'reference', 'reference-v2' (MODEL_CARD.md) or a checkpoint path")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.set_defaults(run=_handler("clinical.study", "cli_study"))


def _add_listen(sub) -> None:
    p = sub.add_parser("listen", help="a DICOM storage receiver: run the study pipeline on every study sent to it")
    p.add_argument("--port", type=int, required=True, help="TCP port to listen on (e.g. 11112)")
    p.add_argument("--out", required=True, help="folder for received studies (incoming/) and their results (results/)")
    p.add_argument("--pacs", default=None, metavar="AET@HOST:PORT", help="send each study's SEG and SR to this PACS")
    p.add_argument("--ae-title", default="MSTOOLKIT", help="our AE title (default MSTOOLKIT)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only; 0.0.0.0 for all)")
    p.add_argument("--idle-seconds", type=float, default=10.0,
                   help="process a study once nothing more has arrived for it for this long (default 10)")
    p.add_argument("--model", default="reference", help="'reference', 'reference-v2' (MODEL_CARD.md) or a checkpoint path")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.set_defaults(run=_handler("clinical.study", "cli_listen"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mstoolkit",
        description="Learn and run automated multiple-sclerosis lesion segmentation in brain MRI.",
    )
    parser.add_argument("--version", action="version", version=f"mstoolkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_doctor, _add_data, _add_notebooks, _add_preprocess, _add_train, _add_segment, _add_evaluate,
                _add_longitudinal, _add_study, _add_listen):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (MSToolkitInputError, FileNotFoundError) as err:
        # A user mistake: say what is wrong and how to fix it, without a traceback.
        print(f"mstoolkit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
