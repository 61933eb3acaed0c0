"""Find and load the cases of a dataset folder.

Two layouts are understood:

* the toolkit's BIDS-like layout, written by the phantom generator and by the
  downloaders (see ARCHITECTURE.md): ``sub-XXX[/ses-YY]/anat/sub-XXX[_ses-YY]_FLAIR.nii.gz`` …
* the layout of the real ``open_ms_data`` sample:
  ``cross_sectional/MNI/patientNN/FLAIR_….nii.gz`` and ``GOLD_STANDARD_….nii.gz``.

Introduced in notebook 01 (data loading).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .io import Case, MSToolkitInputError, load_case

__all__ = [
    "BIDS_SUFFIX",
    "CaseFiles",
    "list_cases",
    "load_dataset_case",
    "load_cases",
    "bids_paths",
    "default_data_dir",
    "phantom_dir",
    "ensure_phantom",
    "real_sample_dir",
    "NOTEBOOK_SUBJECTS",
    "cli_prepare",
]

#: The phantom sizes (subjects) the notebooks ask ``ensure_phantom`` for, per
#: profile; ``mstoolkit data prepare`` builds them all ahead of a workshop.
#: A test keeps this table in step with the notebooks' parameters.
NOTEBOOK_SUBJECTS = {"quick": (2,), "workshop": (2, 4, 6), "full": (4, 8, 20)}

#: File-name suffix of each sequence in the BIDS-like layout.
BIDS_SUFFIX = {"FLAIR": "FLAIR", "T1": "T1w", "T1CE": "ce-gad_T1w", "T2": "T2w"}
_LESION_SUFFIX = "label-lesion_mask"
_BRAIN_SUFFIX = "label-brain_mask"
# open_ms_data file-name prefixes (upstream names) → toolkit sequence names.
_OPEN_MS_PREFIX = {"FLAIR": "FLAIR", "T1": "T1", "T1CE": "T1POST", "T2": "T2"}


@dataclass
class CaseFiles:
    """Where the files of one case are; :func:`load_dataset_case` reads them."""

    case_id: str
    images: dict[str, Path]
    mask: Path | None = None
    brain_mask: Path | None = None
    subject: str = ""
    session: str | None = None
    meta: dict = field(default_factory=dict)

    def load(self, sequences: Sequence[str] | None = None) -> Case:
        """Read the files; with ``sequences`` only those images (less memory), in that order."""
        images = self.images
        if sequences is not None:
            missing = [s for s in sequences if s not in self.images]
            if missing:
                raise MSToolkitInputError(f"Case '{self.case_id}' has no {', '.join(missing)} image; "
                                          f"it has {', '.join(self.images) or 'none'}.")
            images = {s: self.images[s] for s in sequences}
        case = load_case(images, mask=self.mask, brain_mask=self.brain_mask, case_id=self.case_id)
        case.meta.update(self.meta, subject=self.subject, session=self.session)
        return case


def bids_paths(data_dir: str | os.PathLike, subject: str, session: str | None = None) -> dict[str, Path]:
    """Paths of every file of a subject (and session) in the BIDS-like layout.

    Keys are the sequence names plus ``"mask"`` and ``"brain_mask"``. Writers
    (the phantom, the downloaders) and readers share this one definition.

    >>> sorted(bids_paths("data", "sub-001"))
    ['FLAIR', 'T1', 'T1CE', 'T2', 'brain_mask', 'mask']
    """
    folder = Path(data_dir) / subject
    stem = subject
    if session:
        folder, stem = folder / session, f"{subject}_{session}"
    anat = folder / "anat"
    paths = {seq: anat / f"{stem}_{suffix}.nii.gz" for seq, suffix in BIDS_SUFFIX.items()}
    paths["mask"] = anat / f"{stem}_{_LESION_SUFFIX}.nii.gz"
    paths["brain_mask"] = anat / f"{stem}_{_BRAIN_SUFFIX}.nii.gz"
    return paths


def _bids_case(data_dir: Path, subject: str, session: str | None) -> CaseFiles | None:
    paths = bids_paths(data_dir, subject, session)
    images = {seq: paths[seq] for seq in BIDS_SUFFIX if paths[seq].exists()}
    if not images:
        return None
    case_id = subject if session is None else f"{subject}_{session}"
    return CaseFiles(
        case_id=case_id,
        images=images,
        mask=paths["mask"] if paths["mask"].exists() else None,
        brain_mask=paths["brain_mask"] if paths["brain_mask"].exists() else None,
        subject=subject,
        session=session,
    )


def _open_ms_cases(data_dir: Path) -> list[CaseFiles]:
    cases = []
    for patient in sorted((data_dir / "cross_sectional" / "MNI").glob("patient*")):
        images = {}
        for seq, prefix in _OPEN_MS_PREFIX.items():
            found = sorted(patient.glob(f"{prefix}_*.nii.gz"))
            if found:
                images[seq] = found[0]
        if not images:  # mask-only folders (the sample keeps 28 masks without images)
            continue
        masks = sorted(patient.glob("GOLD_STANDARD_*.nii.gz"))
        cases.append(
            CaseFiles(
                case_id=patient.name,
                images=images,
                mask=masks[0] if masks else None,
                subject=patient.name,
                meta={"dataset": "open_ms_data", "space": "MNI"},
            )
        )
    return cases


def list_cases(data_dir: str | os.PathLike) -> list[CaseFiles]:
    """List the cases of a dataset folder (toolkit layout or the open_ms_data layout).

    Raises a clear error when the folder does not exist or holds no images.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"Dataset folder '{data_dir}' does not exist. Generate the phantom with "
            "`mstoolkit data phantom --out DIR` or download data with `mstoolkit data download`."
        )
    if (data_dir / "cross_sectional").is_dir():
        cases = _open_ms_cases(data_dir)
    else:
        cases = []
        for subject_dir in sorted(data_dir.glob("sub-*")):
            sessions = sorted(p.name for p in subject_dir.glob("ses-*") if p.is_dir())
            for session in sessions or [None]:
                found = _bids_case(data_dir, subject_dir.name, session)
                if found is not None:
                    cases.append(found)
    if not cases:
        raise MSToolkitInputError(
            f"No cases found in '{data_dir}'. Expected sub-XXX/anat/sub-XXX_FLAIR.nii.gz "
            "(see ARCHITECTURE.md) or the open_ms_data layout."
        )
    return cases


def load_dataset_case(data_dir: str | os.PathLike, case_id: str, *, sequences: Sequence[str] | None = None) -> Case:
    """Load one case of a dataset folder by its id (e.g. ``"sub-001"`` or ``"patient26"``), optionally only ``sequences``."""
    cases = {c.case_id: c for c in list_cases(data_dir)}
    if case_id not in cases:
        shown = ", ".join(list(cases)[:10]) + (" …" if len(cases) > 10 else "")
        raise MSToolkitInputError(f"No case '{case_id}' in '{data_dir}'; available: {shown}.")
    return cases[case_id].load(sequences)


def load_cases(data_dir: str | os.PathLike, case_ids: list[str] | None = None) -> list[Case]:
    """Load several (by default all) cases of a dataset folder."""
    refs = list_cases(data_dir)
    if case_ids is not None:
        wanted = set(case_ids)
        refs = [c for c in refs if c.case_id in wanted]
    return [c.load() for c in refs]


def default_data_dir() -> Path:
    """The cache folder for datasets: ``$MSTOOLKIT_DATA`` or ``~/.cache/mstoolkit``."""
    return Path(os.environ.get("MSTOOLKIT_DATA", Path.home() / ".cache" / "mstoolkit")).expanduser()


def phantom_dir(n_subjects: int, seed: int, *, longitudinal: bool = False) -> Path:
    """Cache folder of a phantom dataset with these settings."""
    kind = "phantom-long" if longitudinal else "phantom"
    return default_data_dir() / f"{kind}-n{n_subjects}-seed{seed}"


def ensure_phantom(
    data_dir: str | os.PathLike | None = None,
    *,
    n_subjects: int = 4,
    seed: int = 0,
    longitudinal: bool = False,
    **phantom_options,
) -> Path:
    """Return a folder holding a phantom dataset, generating it first if needed.

    Notebooks call this so they run on a fresh machine with no download: the
    phantom is built from templates shipped inside nilearn's wheel.
    """
    from .phantom_dataset import generate_dataset

    out = Path(data_dir) if data_dir is not None else phantom_dir(n_subjects, seed, longitudinal=longitudinal)
    if (out / "participants.tsv").exists():
        return out
    generate_dataset(out, n_subjects=n_subjects, seed=seed, longitudinal=longitudinal, **phantom_options)
    return out


def real_sample_dir() -> Path | None:
    """The real open_ms_data sample if present on this machine, else None.

    Looked up in ``$MSTOOLKIT_REAL_SAMPLE``, then in ``shared/data/open_ms_data``
    beside the repository (present in CI, not in a user's fresh clone), then in
    the download cache.
    """
    candidates = []
    if os.environ.get("MSTOOLKIT_REAL_SAMPLE"):
        candidates.append(Path(os.environ["MSTOOLKIT_REAL_SAMPLE"]))
    here = Path(__file__).resolve()
    candidates += [parent / "shared" / "data" / "open_ms_data" for parent in here.parents[:4]]
    candidates.append(default_data_dir() / "open_ms_data")
    for candidate in candidates:
        if (candidate / "cross_sectional").is_dir():
            return candidate
    return None


def cli_prepare(args) -> int:
    """``mstoolkit data prepare``: build the data the notebooks use at a profile (Binder, workshops)."""
    from .exercises import PROFILES

    if args.profile not in PROFILES:
        raise MSToolkitInputError(f"'profile' must be one of {', '.join(PROFILES)}, got {args.profile!r}.")
    for n_subjects in NOTEBOOK_SUBJECTS[args.profile]:
        path = ensure_phantom(n_subjects=n_subjects, seed=args.seed)
        print(f"phantom with {n_subjects} subjects ready in {path}")
    return 0
