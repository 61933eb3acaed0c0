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
from typing import Sequence, TypeVar

from mstoolkit.data.io import Case, MSToolkitInputError, load_case

__all__ = [
    "BIDS_SUFFIX",
    "CaseFiles",
    "list_cases",
    "load_dataset_case",
    "load_cases",
    "bids_paths",
    "default_data_dir",
    "real_sample_dir",
    "real_longitudinal_patient",
    "SHIPPED_SAMPLE",
    "ROLES",
    "SubjectSplit",
    "SUBJECT_SPLITS",
    "subject_split",
    "NOTEBOOK_SUBJECTS",
]

_Item = TypeVar("_Item")

#: The four jobs a subject can have; no subject has two.
ROLES = ("train", "validation", "calibration", "test")


@dataclass(frozen=True)
class SubjectSplit:
    """Which phantom subjects train, validate, calibrate and test at one run profile.

    ``train`` subjects are what a model learns from; ``validation`` picks the checkpoint and
    the threshold; ``calibration`` fits post-hoc settings such as a temperature (notebook 06);
    ``test`` is only ever scored. A number reported on a subject that trained, validated or
    calibrated the model would flatter it, so notebooks 04–06 score ``test`` subjects only.

    Introduced in notebook 03 (U-Net training).

    >>> split = subject_split("quick")
    >>> split.role("sub-001"), split.n_subjects
    ('validation', 5)
    """

    train: tuple[str, ...]
    validation: tuple[str, ...]
    calibration: tuple[str, ...]
    test: tuple[str, ...]

    def subjects(self, role: str) -> tuple[str, ...]:
        """The subject ids of one role (``"train"``, ``"validation"``, ``"calibration"`` or ``"test"``)."""
        if role not in ROLES:
            raise MSToolkitInputError(f"'role' must be one of {', '.join(ROLES)}, got {role!r}.")
        return getattr(self, role)

    def role(self, subject: str) -> str | None:
        """The role of ``subject`` in this split, or None for a subject outside it."""
        return next((role for role in ROLES if subject in self.subjects(role)), None)

    @property
    def n_subjects(self) -> int:
        """How many phantom subjects to generate (``ensure_phantom(n_subjects=...)``) to hold every role."""
        return max(int(subject.removeprefix("sub-")) for role in ROLES for subject in self.subjects(role))

    def select(self, cases: Sequence[_Item], role: str) -> list[_Item]:
        """The cases (:class:`CaseFiles` or :class:`~mstoolkit.data.io.Case`) of one role, in the split's order."""
        wanted = self.subjects(role)
        by_id = {case.case_id: case for case in cases}
        missing = [subject for subject in wanted if subject not in by_id]
        if missing:
            raise MSToolkitInputError(
                f"The {role} subject(s) {', '.join(missing)} are not in this dataset; generate the phantom with "
                f"ensure_phantom(n_subjects={self.n_subjects}) (the split's n_subjects).")
        return [by_id[subject] for subject in wanted]


def _subjects(*numbers: int) -> tuple[str, ...]:
    return tuple(f"sub-{n:03d}" for n in numbers)


#: The one definition of which phantom subject (``ensure_phantom(seed=SEED)``; subject *i* depends only on
#: the seed and *i*) has which job at each run profile. Notebooks 03–06 and ``mstoolkit train --preset``
#: read it. Subject *i* is rendered by scanner profile ``list(phantom.PROFILES)[(i - 1) % 4]``; validation
#: subjects are ``standard`` ones (validation Dice then measures one reference scanner), and the test and
#: calibration subjects cover every scanner profile (at ``quick``, two test subjects cover two). Every
#: training set holds a subject of a scanner other than ``low_field``, the profile notebook 03's
#: domain-shift experiment holds out. The workshop and full training sets are the ones notebook 03
#: always trained on, so its recorded figures still hold.
SUBJECT_SPLITS: dict[str, SubjectSplit] = {
    "quick": SubjectSplit(train=_subjects(5), validation=_subjects(1), calibration=_subjects(3), test=_subjects(4, 2)),
    "workshop": SubjectSplit(train=_subjects(1, 2, 3, 4, 6), validation=_subjects(5), calibration=_subjects(7, 8),
                             test=_subjects(9, 10, 11, 12)),
    "full": SubjectSplit(train=_subjects(*(n for n in range(1, 21) if n != 17)), validation=_subjects(17),
                         calibration=_subjects(21, 22, 23, 24), test=_subjects(*range(25, 33))),
}


def subject_split(profile: str) -> SubjectSplit:
    """The :data:`SUBJECT_SPLITS` entry of a run profile (``"quick"``, ``"workshop"`` or ``"full"``).

    Introduced in notebook 03 (U-Net training).
    """
    if profile not in SUBJECT_SPLITS:
        raise MSToolkitInputError(f"'profile' must be one of {', '.join(SUBJECT_SPLITS)}, got {profile!r}.")
    return SUBJECT_SPLITS[profile]


#: The phantom sizes (subjects) the notebooks ask ``ensure_phantom`` for, per
#: profile: one dataset that holds every role of the profile's split.
#: ``mstoolkit data prepare`` builds them ahead of a workshop; a test keeps
#: this table in step with the notebooks.
NOTEBOOK_SUBJECTS = {profile: (split.n_subjects,) for profile, split in SUBJECT_SPLITS.items()}

#: File-name suffix of each sequence in the BIDS-like layout.
BIDS_SUFFIX = {"FLAIR": "FLAIR", "T1": "T1w", "T1CE": "ce-gad_T1w", "T2": "T2w"}
_LESION_SUFFIX = "label-lesion_mask"
_BRAIN_SUFFIX = "label-brain_mask"
# open_ms_data file-name prefixes (upstream names) → toolkit sequence names.
_OPEN_MS_PREFIX = {"FLAIR": "FLAIR", "T1": "T1", "T1CE": "T1POST", "T2": "T2"}
#: The real sample shipped inside the package (open_ms_data patient26, CC-BY; see its README).
SHIPPED_SAMPLE = Path(__file__).resolve().parent / "sample_data" / "open_ms_data"


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


def real_sample_dir() -> Path:
    """The real open_ms_data sample: the copy shipped inside the package, or ``$MSTOOLKIT_REAL_SAMPLE``.

    The package ships one real patient (open_ms_data patient26: FLAIR, T1, T1 post-contrast,
    T2 and the consensus lesion mask) and one longitudinal pair (patient01's two FLAIRs, the
    lesion-change truth and the transforms into its space), CC-BY
    (``mstoolkit/data/sample_data/open_ms_data/README.md``), so every real-data section of the
    notebooks runs offline. Set ``$MSTOOLKIT_REAL_SAMPLE`` to
    a downloaded open_ms_data folder (``mstoolkit data download open_ms_data``) to use that instead.

    Introduced in notebook 01 (data loading).
    """
    if os.environ.get("MSTOOLKIT_REAL_SAMPLE"):
        chosen = Path(os.environ["MSTOOLKIT_REAL_SAMPLE"]).expanduser()
        if not (chosen / "cross_sectional").is_dir():
            raise MSToolkitInputError(f"$MSTOOLKIT_REAL_SAMPLE is '{chosen}', which has no cross_sectional/ folder; "
                                      "point it at an open_ms_data download or unset it to use the shipped sample.")
        return chosen
    return SHIPPED_SAMPLE


#: The files of one open_ms_data longitudinal patient that :func:`real_longitudinal_patient` requires.
LONGITUDINAL_FILES = ("study1_FLAIR.nii.gz", "study2_FLAIR.nii.gz", "gt.nii.gz",
                      "study1_FLAIR_to_common_space.txt", "study2_FLAIR_to_common_space.txt")


def real_longitudinal_patient(patient: str = "patient01") -> Path:
    """The folder of one real longitudinal patient of open_ms_data (Lesjak et al. 2016, CC-BY).

    ``longitudinal/raw/<patient>/`` of :func:`real_sample_dir`: both FLAIRs as acquired
    (``study1`` baseline, ``study2`` follow-up), ``gt.nii.gz`` (the consensus of lesion change,
    in a common space) and the ITK transforms of each FLAIR into that space. patient01 ships
    with the package; others need ``mstoolkit data download open_ms_data`` and
    ``$MSTOOLKIT_REAL_SAMPLE``.

    Introduced in notebook 07 (longitudinal change).
    """
    folder = real_sample_dir() / "longitudinal" / "raw" / patient
    missing = [name for name in LONGITUDINAL_FILES if not (folder / name).is_file()]
    if missing:
        raise MSToolkitInputError(
            f"The longitudinal patient '{patient}' is not complete in {folder.parent} (missing {', '.join(missing)}); "
            "only patient01 ships with the package: download the others with `mstoolkit data download open_ms_data` "
            "and set $MSTOOLKIT_REAL_SAMPLE to that folder.")
    return folder
