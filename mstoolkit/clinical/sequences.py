"""Which series of a study is the FLAIR, the T1, the T1 after contrast, the T2: read from the headers.

A scanner names each series after the protocol the technologist picked, and the names
differ by vendor, site and language: Siemens calls a 3D FLAIR ``t2_spc_da-fl_sag_p2_iso``
(SPACE, "dark fluid"), GE ``Sag CUBE FLAIR``, Philips ``3D_Brain_VIEW_FLAIR``; a German
site marks the T1 after contrast with ``KM`` (Kontrastmittel) and the one before with
``nativ``. Names are typed by people, so this module reads the physics too, from the
MR Image Module (DICOM PS3.3 C.8.3.1):

- **RepetitionTime (TR), EchoTime (TE), InversionTime (TI)** in ms. A long TE (≥ 60 ms)
  after a long TR weights the image by T2; a short TE (≤ 40 ms) after a short TR by T1.
  An inversion pulse at TI nulls the tissue whose magnetisation crosses zero then:
  for cerebrospinal fluid (T1 about 4 s at 1.5 and 3 T; Lu et al. 2005, JMRI 22:13–22)
  that is ``TI = T1 · ln(2 / (1 + exp(-TR / T1)))``, about 2500 ms for TR 9000 ms and
  1800 ms for the TR 5000 ms of a 3D FLAIR. A **FLAIR** is that inversion with a long
  TE (Hajnal et al. 1992, J Comput Assist Tomogr 16:841–844). An inversion with a short
  TE is **T1**-weighted: MPRAGE (TI 700–1100 ms, gradient echo; Mugler & Brookeman 1990,
  Magn Reson Med 15:152–157) and GE's "T1 FLAIR" (TI about 800 ms, TE about 20 ms:
  its name says FLAIR, its physics says T1). A TI below 300 ms nulls fat (STIR).
- **ScanningSequence** (0018,0020): SE spin echo, IR inversion recovery, GR gradient echo,
  EP echo planar (diffusion, perfusion, fMRI); **SequenceVariant** (0018,0021): SK, SS,
  SP, MP (magnetisation prepared), OSP.
- **ImageType** (0008,0008; PS3.3 C.7.6.1.1.2 and C.8.3.1.1.1): ORIGINAL or DERIVED,
  PRIMARY or SECONDARY, then vendor values such as LOCALIZER, MPR or REFORMATTED,
  DIFFUSION, ADC, TRACEW, SWI, MIP, T1 MAP, P (phase).
- **MRAcquisitionType** (0018,0023): 2D or 3D.
- **ContrastBolusAgent** (0018,0010) and **ContrastBolusIngredient** (0018,1048) of the
  Contrast/Bolus Module (PS3.3 C.7.6.4): a gadolinium agent named there marks the series
  as acquired after the injection. Many scanners leave both empty, so a name such as
  ``+C``, ``post``, ``GD``, ``KM`` (German), ``MDC`` (Italian) counts as supporting evidence;
  it never decides against the header (an explicit ``NONE``, or the other series of the
  study naming an agent where this one names none).

:func:`identify_series` gives one series a role (``"FLAIR"``, ``"T1"``, ``"T1CE"``,
``"T2"``, the toolkit's sequence names, or None for localizers, diffusion, angiography,
maps, projections and everything else), a confidence and the reasons, which the study
pipeline writes to ``series.json``. :func:`choose_series` then picks one series per role
the model needs and stops with the candidates listed when that is not clear; a user
decides with ``--series FLAIR=<SeriesInstanceUID>``.

Notebook 08 (the clinical pipeline) introduces these functions.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from mstoolkit.clinical.dicom_series import DicomSeries
from mstoolkit.data.io import MSToolkitInputError

__all__ = [
    "ROLES",
    "SeriesRole",
    "identify_series",
    "identify_all",
    "choose_series",
    "parse_series_overrides",
    "series_table",
    "csf_null_inversion_time",
]

log = logging.getLogger(__name__)

ROLES = ("FLAIR", "T1", "T1CE", "T2")

# ----------------------------------------------------------------------------- physics thresholds (ms)

#: T1 of cerebrospinal fluid at 1.5 and 3 T (Lu et al. 2005): the FLAIR inversion nulls it.
CSF_T1_MS = 4300.0
#: A TE this short weights by T1 (or proton density); this long, by T2.
SHORT_TE_MS = 40.0
LONG_TE_MS = 60.0
#: Spin echo: TR below this with a short TE is T1-weighted; at least LONG_TR_MS is T2 or PD.
SHORT_TR_MS = 1000.0
LONG_TR_MS = 2000.0
#: Spoiled gradient echo (FLASH, SPGR, T1-TFE): TR below this with TE below GRADIENT_T1_MAX_TE_MS is T1-weighted;
#: a gradient echo with TE of at least T2STAR_MIN_TE_MS is T2*-weighted (haemosiderin, SWI).
GRADIENT_T1_MAX_TR_MS = 100.0
GRADIENT_T1_MAX_TE_MS = 10.0
T2STAR_MIN_TE_MS = 15.0
#: Inversion times: below STIR_MAX_TI_MS fat is nulled; T1 inversion recovery (MPRAGE, GE T1 FLAIR) up to
#: T1_IR_MAX_TI_MS; FLAIR from FLAIR_MIN_TI_MS (a 3D FLAIR with TR 4800 ms nulls CSF near 1700 ms).
STIR_MAX_TI_MS = 300.0
T1_IR_MAX_TI_MS = 1400.0
FLAIR_MIN_TI_MS = 1200.0

# ----------------------------------------------------------------------------- confidences

AGREE = 0.95  # the name and the physics say the same
PHYSICS_ONLY = 0.8  # the physics is clear, the name says nothing
CONFLICT = 0.6  # the name says otherwise: the physics is kept
NAME_ONLY = 0.5  # the header lacks TR/TE/TI: the name alone
HEADER_SAYS_NONE = 0.95  # ImageType, SOP class or modality rule the series out
NAME_SAYS_NONE = 0.85
UNKNOWN = 0.3
DERIVED_PENALTY = 0.15
CONTRAST_FROM_NAME_ONLY = 0.6
CONTRAST_CONFLICT_PENALTY = 0.2
#: In choose_series, the best candidate must lead the next by this much to be taken.
STANDS_OUT_MARGIN = 0.2

ECHO_PLANAR = "echo planar (diffusion, perfusion or fMRI)"

MR_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
}

# ----------------------------------------------------------------------------- words in names

# Patterns run on the lower-cased SeriesDescription and ProtocolName. "Not a letter before/after"
# stands in for word boundaries, because scanners join words with "_", "-", "+" and digits.
_BEFORE = r"(?<![a-z])"
_AFTER = r"(?![a-z])"

ROLE_WORDS = {
    # "da-fl" is Siemens' "dark fluid"; a T1 word next to FLAIR makes a T1 FLAIR (see _role_from_words).
    "FLAIR": re.compile(r"flair|dark[-_ ]?fluid|" + _BEFORE + r"da[-_ ]?fl" + _AFTER),
    # t1, t1w, st1w (Philips), 3dt1, t1ce; MPRAGE (Siemens), turboFLASH (tfl), SPGR/BRAVO (GE), VIBE, FLASH 3D.
    "T1": re.compile(r"(?<![a-z0-9])(3d[-_ ]?)?s?t1(?![0-9])|mp[-_ ]?rage|" + _BEFORE + r"(tfl|f?spgr|bravo|vibe|fl3d)" + _AFTER),
    # t2, t2w, st2w, 3dt2; not T2* (a susceptibility-weighted gradient echo).
    "T2": re.compile(r"(?<![a-z0-9])(3d[-_ ]?)?s?t2(?![0-9*]|[-_ ]?star)"),
}

# What a name can say a series is, other than the four roles. The "strong" ones decide even when a role
# word is in the name too ("T1 localizer", "DWI T2"); the others only where the physics is silent.
STRONG_OTHER_WORDS = {
    "a localizer": re.compile(r"locali[sz]er|" + _BEFORE + r"loc" + _AFTER + r"|scout|survey|aahead|" + _BEFORE + r"3[-_ ]?pl(ane)?" + _AFTER),
    "diffusion-weighted (DWI, ADC)": re.compile(
        r"dwi|diff|trace|tensor|apparent|" + _BEFORE + r"d?adc|" + _BEFORE + r"dti" + _AFTER + r"|" + _BEFORE + r"b[-_ ]?1000"),
    "perfusion or functional imaging": re.compile(_BEFORE + r"perf|" + _BEFORE + r"(dsc|dce|bold|fmri|asl|pcasl|pasl|resting)" + _AFTER),
    "angiography": re.compile(_BEFORE + r"(tof|mra)" + _AFTER + r"|angio|veno"),
    "double inversion recovery (DIR)": re.compile(_BEFORE + r"dir" + _AFTER + r"|double[-_ ]?(ir|inv)"),
    "a parameter map": re.compile(_BEFORE + r"(t1|t2)?[-_ ]?maps?" + _AFTER + r"|relaxometr"),
    "a projection (MIP)": re.compile(_BEFORE + r"(mip|minip|mnip)" + _AFTER),
    "a phase image": re.compile(_BEFORE + r"pha(se)?" + _AFTER),
}
WEAK_OTHER_WORDS = {
    "susceptibility-weighted (T2*, SWI)": re.compile(r"t2[-_ ]?\*|t2[-_ ]?star|swi|swan|hemo|suscept"),
    "proton-density-weighted": re.compile(_BEFORE + r"pdw?" + _AFTER + r"|proton"),
    "STIR (fat nulled)": re.compile(r"stir"),
}

# Contrast in names, in several languages. "Before" words are read first and removed, so "ohne KM"
# (German: without contrast) does not count as "KM".
BEFORE_CONTRAST_WORDS = re.compile(
    _BEFORE + r"(pre|pr[aä]e?|vor|ohne|sin|sans|senza|without|w/?o)[-_ ]?(contrast\w*|kontrast\w*|km|gd|gad\w*|mdc|c|inj\w*)?" + _AFTER
    + r"|" + _BEFORE + r"nativ(e)?" + _AFTER
)
AFTER_CONTRAST_WORDS = re.compile(
    _BEFORE + r"post"  # post, postgd, post_km, postcontrast
    + r"|" + _BEFORE + r"(mit|nach|con|avec|with|after)[-_ ]?(km|kontrast\w*|contrast\w*|gd|gad\w*|mdc|inj\w*)"
    + r"|\+[-_ ]?(c|gd|gad\w*|km|ce|contrast\w*|kontrast\w*|mdc)" + _AFTER + r"|" + _BEFORE + r"c[-_ ]?\+"
    + r"|" + _BEFORE + r"(gd|gad|gado\w*|gadolinium|km|kontrast\w*|contrast\w*|mdc|ce|inj|injecte|injected)" + _AFTER
    + r"|(?<![a-z0-9])s?t1w?[-_ ]?(ce|c|gd|km|\+)" + _AFTER
)
BOTH_CONTRAST_WORDS = re.compile(
    r"w\s*/?\s*(and\s*|\+\s*|&\s*)?w\s*/?\s*o" + _AFTER + r"|with\s*(and|/|&)\s*without|mit\s*(und|/|&)\s*ohne|\+\s*/\s*-")
REFORMAT_WORDS = re.compile(_BEFORE + r"(mpr|reformat\w*|mpr\d+|resampled)" + _AFTER)

#: Values that some scanners and RIS write into ContrastBolusAgent to say that none was given.
NO_AGENT_VALUES = {"none", "no", "n", "nein", "n/a", "na", "-", "0", "nil", "kein", "keine", "ohne", "no contrast", "non"}

# ----------------------------------------------------------------------------- image types

LOCALIZER_TYPES = {"LOCALIZER", "SCOUT"}
DIFFUSION_TYPES = {"DIFFUSION", "ADC", "EADC", "TRACEW", "TRACE", "FA", "TENSOR", "ISOTROPIC", "DWI", "EXP"}
PROJECTION_TYPES = {"PROJECTION IMAGE", "MIP", "MNIP", "MINIP", "MIN IP"}
SUBTRACTION_TYPES = {"SUBTRACTION", "SUB", "MODULUS SUBTRACT", "PHASE SUBTRACT", "IMAGE ADDITION"}
PHASE_TYPES = {"P", "PHASE", "R", "REAL", "I", "IMAGINARY", "SWI", "PHASE MAP"}
PERFUSION_TYPES = {"PERFUSION", "TTP", "CBF", "CBV", "MTT", "MOSAIC", "FMRI", "MOCO"}
REFORMAT_TYPES = {"MPR", "REFORMATTED", "CSA MPR", "CSAMPR", "MPR THICK", "RESAMPLED", "CSA RESAMPLED"}


@dataclass(frozen=True)
class SeriesRole:
    """The role identified for one series, how sure it is (0..1) and why.

    ``role`` is one of :data:`ROLES` or None. ``derived`` marks a derived image such as a
    reformat (MPR) of another series; ``post_contrast`` a series acquired after a contrast
    injection (a FLAIR or T2 may be, too). :func:`choose_series` reads both.
    """

    series: DicomSeries
    role: str | None
    confidence: float
    reasons: tuple[str, ...]
    derived: bool = False
    post_contrast: bool = False


def csf_null_inversion_time(repetition_time: float, *, t1: float = CSF_T1_MS) -> float:
    """The inversion time (ms) that nulls a tissue of longitudinal relaxation ``t1`` (ms) at ``repetition_time``.

    From the inversion-recovery signal ``1 - 2 exp(-TI/T1) + exp(-TR/T1)`` (readout effects ignored):
    ``TI = T1 · ln(2 / (1 + exp(-TR/T1)))``. For CSF (T1 ≈ 4300 ms) and TR 9000 ms this is about 2480 ms.

    >>> round(csf_null_inversion_time(9000), -1)
    2480.0
    """
    return t1 * math.log(2.0 / (1.0 + math.exp(-repetition_time / t1)))


def _ms(value: float | None) -> str:
    return f"{value:g} ms" if value is not None else "missing"


def _values(text: str) -> set[str]:
    """The values of a multi-valued header field (``"SE\\\\IR"`` → ``{"SE", "IR"}``), upper case."""
    return {v.strip().upper() for v in text.split("\\") if v.strip()}


def _name_of(series: DicomSeries, *, use_protocol_name: bool = True) -> str:
    """SeriesDescription and ProtocolName (where different), for the name rules."""
    names = [series.series_description, series.protocol_name if use_protocol_name else ""]
    return " / ".join(dict.fromkeys(n for n in names if n))


# ----------------------------------------------------------------------------- the header rules


def _excluded_by_header(series: DicomSeries) -> str | None:
    """Why the header (modality, SOP class, ImageType, SequenceName) rules out every role, or None."""
    if series.modality and series.modality.upper() != "MR":
        return f"modality {series.modality}, not MR"
    if series.sop_class_uid and series.sop_class_uid not in MR_SOP_CLASSES:
        return f"SOP class {series.sop_class_uid} is not an MR image (e.g. a secondary capture, a report or a presentation state)"
    image_type = _values(series.image_type)
    shown = f"ImageType {series.image_type}"
    if image_type & LOCALIZER_TYPES:
        return f"{shown}: a localizer"
    if image_type & DIFFUSION_TYPES or any("ADC" in v or "TRACE" in v or "DIFFUSION" in v for v in image_type):
        return f"{shown}: diffusion-weighted or a diffusion map"
    if image_type & PROJECTION_TYPES:
        return f"{shown}: a projection (MIP)"
    if image_type & SUBTRACTION_TYPES:
        return f"{shown}: a subtraction or sum of other images"
    if image_type & PHASE_TYPES:
        return f"{shown}: a phase or susceptibility image"
    if image_type & PERFUSION_TYPES:
        return f"{shown}: perfusion or functional imaging"
    if any(v.endswith("MAP") for v in image_type):
        return f"{shown}: a parameter map"
    if re.search(r"ep_b\d", series.sequence_name.lower()):  # Siemens names diffusion readouts *ep_b1000t
        return f"SequenceName {series.sequence_name}: a diffusion readout with its b-value"
    return None


def _is_derived(series: DicomSeries, name: str) -> str | None:
    """Why the series is a derived image (a reformat of another), or None for an original acquisition."""
    image_type = [v.strip().upper() for v in series.image_type.split("\\") if v.strip()]
    if image_type and (image_type[0] == "DERIVED" or "SECONDARY" in image_type[:2] or set(image_type) & REFORMAT_TYPES):
        return f"derived image (ImageType {series.image_type})"
    found = REFORMAT_WORDS.search(name.lower())
    if found:
        return f"the name says reformat ('{found.group(0)}')"
    return None


def _physics(series: DicomSeries) -> tuple[str | None, list[str]]:
    """What TR, TE, TI and ScanningSequence say: a role, another kind of sequence, or None (not enough)."""
    tr, te, ti = series.repetition_time, series.echo_time, series.inversion_time
    scanning = _values(series.scanning_sequence)
    scanning_text = f"ScanningSequence {series.scanning_sequence}" if series.scanning_sequence else ""
    if "EP" in scanning:
        return ECHO_PLANAR, [f"{scanning_text}: echo planar"]
    gradient = "GR" in scanning and "SE" not in scanning
    # GE writes TI 0 for sequences without an inversion; Siemens leaves it out.
    inversion = "IR" in scanning or (ti is not None and ti > 0)
    if te is None:
        return None, [f"EchoTime missing (TR {_ms(tr)}, TI {_ms(ti)})"]

    if inversion:
        what = f"inversion recovery ({scanning_text})" if "IR" in scanning else "inversion recovery"
        if ti is None or ti <= 0:
            if te >= LONG_TE_MS and not gradient:
                return "FLAIR", [f"{what} with long TE {_ms(te)}, TI not recorded: FLAIR-like"]
            if te <= SHORT_TE_MS:
                return "T1", [f"{what} with short TE {_ms(te)}, TI not recorded: T1-weighted"]
            return None, [f"{what} with TE {_ms(te)} and no TI"]
        if ti < STIR_MAX_TI_MS and not gradient:
            return "STIR (fat nulled)", [f"TI {_ms(ti)}: the inversion nulls fat (STIR)"]
        if gradient or te <= SHORT_TE_MS:
            readout = "gradient-echo" if gradient else "short-TE"
            if ti <= T1_IR_MAX_TI_MS:
                kind = "MPRAGE-like" if gradient else "a T1 inversion recovery, such as GE's T1 FLAIR"
                return "T1", [f"{what}, TI {_ms(ti)} with {readout} readout (TE {_ms(te)}): T1-weighted, {kind}"]
            if gradient:
                return "proton-density-like inversion (e.g. MP2RAGE's second inversion)", [
                    f"gradient echo (TE {_ms(te)}) after a long TI {_ms(ti)}: not T2-weighted, so not a FLAIR"]
            return None, [f"{what}, TI {_ms(ti)} with short TE {_ms(te)}: neither a FLAIR nor a T1 inversion recovery"]
        if te >= LONG_TE_MS and ti >= FLAIR_MIN_TI_MS:
            reasons = [f"{what}, TI {_ms(ti)}"]
            if tr is not None:
                null = csf_null_inversion_time(tr)
                # 3D FLAIRs with variable refocusing angles null CSF somewhat off the simple formula.
                if abs(ti - null) <= 0.3 * null:
                    reasons.append(f"TI {ti:g} ms with TR {tr:g} ms nulls CSF (null point ≈ {null:.0f} ms)")
                else:
                    reasons.append(f"TI {ti:g} ms is long, though the CSF null point for TR {tr:g} ms is ≈ {null:.0f} ms")
            reasons.append(f"long TE {_ms(te)}: T2-weighted, so a FLAIR")
            return "FLAIR", reasons
        return None, [f"{what}, TI {_ms(ti)}, TE {_ms(te)}: neither a FLAIR (TI ≥ {FLAIR_MIN_TI_MS:g}, TE ≥ {LONG_TE_MS:g} ms) "
                      f"nor a T1 inversion recovery (TE ≤ {SHORT_TE_MS:g} ms)"]

    if tr is None:
        return None, [f"RepetitionTime missing (TE {_ms(te)})"]
    if gradient:
        if tr < GRADIENT_T1_MAX_TR_MS and te < GRADIENT_T1_MAX_TE_MS:
            return "T1", [f"spoiled gradient echo ({scanning_text}), TR {_ms(tr)}, TE {_ms(te)}: T1-weighted"]
        if te >= T2STAR_MIN_TE_MS:
            return "susceptibility-weighted (T2*, SWI)", [f"gradient echo with TE {_ms(te)}: T2*-weighted"]
        return None, [f"gradient echo with TR {_ms(tr)}, TE {_ms(te)}: weighting unclear"]
    if tr >= LONG_TR_MS and te >= LONG_TE_MS:
        return "T2", [f"no inversion, long TR {_ms(tr)} and long TE {_ms(te)}: T2-weighted"]
    if tr >= LONG_TR_MS and te <= SHORT_TE_MS:
        return "proton-density-weighted", [f"long TR {_ms(tr)} with short TE {_ms(te)}: proton-density-weighted"]
    if tr < SHORT_TR_MS and te <= SHORT_TE_MS:
        return "T1", [f"no inversion, short TR {_ms(tr)} and short TE {_ms(te)}: T1-weighted"]
    return None, [f"TR {_ms(tr)}, TE {_ms(te)}: weighting unclear"]


def _name_words(name: str) -> tuple[str | None, str | None, str | None, list[str]]:
    """What the name says: (role, strong other kind, weak other kind, reasons)."""
    text = name.lower()
    found = {role: pattern.search(text) for role, pattern in ROLE_WORDS.items()}
    found = {role: match.group(0) for role, match in found.items() if match}
    strong = next(((kind, m.group(0)) for kind, p in STRONG_OTHER_WORDS.items() if (m := p.search(text))), None)
    weak = next(((kind, m.group(0)) for kind, p in WEAK_OTHER_WORDS.items() if (m := p.search(text))), None)
    reasons = []
    if strong:
        reasons.append(f"the name '{name}' says {strong[0]} ('{strong[1]}')")
        return None, strong[0], None, reasons

    role = None
    if "FLAIR" in found and "T1" in found and "T2" not in found:
        role = "T1"
        reasons.append(f"the name '{name}' says T1 FLAIR ('{found['T1']}', '{found['FLAIR']}'): a T1-weighted inversion recovery")
    elif "FLAIR" in found:
        role = "FLAIR"
        reasons.append(f"the name '{name}' says FLAIR ('{found['FLAIR']}')")
    elif len(found) == 1:
        role = next(iter(found))
        reasons.append(f"the name '{name}' says {role} ('{found[role]}')")
    elif found:
        reasons.append(f"the name '{name}' names both T1 and T2")
    if weak:
        reasons.append(f"the name '{name}' says {weak[0]} ('{weak[1]}')")
        if role:
            # "pd+t2_tse" (both echoes of a dual-echo series), "t2_fl2d_hemo": only the physics can tell.
            return None, None, weak[0], reasons
    return role, None, weak[0] if weak else None, reasons


def _contrast(series: DicomSeries, name: str, *, trust_contrast_header: bool,
              study_records_contrast: bool) -> tuple[str, str | None, list[str]]:
    """What the header and the name say about contrast: (header: "agent", "none" or "empty"; name: "post", "pre" or None; reasons)."""
    agent = " ".join(v for v in (series.contrast_bolus_agent, series.contrast_bolus_ingredient) if v).strip()
    reasons = []
    if not trust_contrast_header:
        header = "empty"
        if agent:
            reasons.append(f"contrast agent '{agent}' is named on every series of the study, the first too: "
                           "entered for the whole exam, so it does not say which series followed the injection")
    elif agent and agent.lower() in NO_AGENT_VALUES:
        header = "none"
        reasons.append(f"ContrastBolusAgent '{agent}': no contrast given")
    elif agent:
        header = "agent"
        reasons.append(f"contrast agent in the header ('{agent}')")
    else:
        header = "empty"
        if study_records_contrast:
            reasons.append("no contrast agent in the header, where other series of this study name one")

    text = BOTH_CONTRAST_WORDS.sub(" ", name.lower())  # "W/WO" (with and without) says nothing about one series
    before = BEFORE_CONTRAST_WORDS.search(text)
    after = AFTER_CONTRAST_WORDS.search(BEFORE_CONTRAST_WORDS.sub(" ", text))
    name = "pre" if before else "post" if after else None
    if name == "pre":
        reasons.append(f"the name says before contrast ('{before.group(0)}')")
    elif name == "post":
        reasons.append(f"the name says after contrast ('{after.group(0)}')")
    return header, name, reasons


def identify_series(series: DicomSeries, *, trust_contrast_header: bool = True, study_records_contrast: bool = False,
                    use_protocol_name: bool = True) -> SeriesRole:
    """The role of one series (``"FLAIR"``, ``"T1"``, ``"T1CE"``, ``"T2"`` or None), with a confidence and the reasons.

    Rules, in order:

    1. The header rules a series out (role None): not MR, not an MR image SOP class, an
       ImageType of a localizer, diffusion (DIFFUSION, ADC, TRACEW, FA), projection (MIP),
       subtraction, phase or SWI, perfusion, a parameter map; a Siemens diffusion
       SequenceName (``*ep_b1000t``).
    2. A name that says localizer, diffusion, perfusion, angiography, DIR, map, MIP or
       phase rules it out too; so does echo-planar physics (ScanningSequence EP).
    3. Otherwise the physics (TR, TE, TI, ScanningSequence; see the module docstring) and
       the name each give a role. Both agree: confidence 0.95; the physics alone: 0.8; they
       disagree: the physics is kept at 0.6 (a GE "Ax FLAIR" with TE 20 ms and TI 860 ms is
       a T1); the header lacks TE or TR: the name alone, 0.5. Physics of another kind
       (STIR, PD, T2*) gives None.
    4. A T1 becomes T1CE when the header names a contrast agent; when the header is empty,
       a name such as ``+C``, ``post``, ``KM``, ``GD`` suffices, at confidence 0.6 at most,
       unless ``study_records_contrast`` (other series of the study name an agent, so this
       one's empty field says "before"). An explicit ``NONE`` keeps it T1. A name that
       disagrees with the header costs 0.2.
    5. A derived image (ImageType DERIVED or SECONDARY, MPR, REFORMATTED, or "MPR" in the
       name) keeps its role with 0.15 less confidence and ``derived=True``:
       :func:`choose_series` prefers the original acquisition.

    ``trust_contrast_header=False`` ignores the contrast agent fields (:func:`identify_all`
    passes it when every series of a study, the first too, names the same agent);
    ``use_protocol_name=False`` reads SeriesDescription alone (:func:`identify_all` passes it
    when one ProtocolName, the site's protocol such as GE's ``MS BRAIN W/WO``, is on every series).
    """
    name = _name_of(series, use_protocol_name=use_protocol_name) or "(no name)"
    excluded = _excluded_by_header(series)
    if excluded:
        return SeriesRole(series, None, HEADER_SAYS_NONE, (excluded,))

    physics, physics_reasons = _physics(series)
    name_role, name_strong, name_weak, name_reasons = _name_words(name)
    reasons: list[str] = []
    if name_strong:
        if physics in ROLES:
            physics_reasons.append(f"the physics alone would say {physics}, but the name is kept: the header cannot tell {name_strong}")
        return SeriesRole(series, None, NAME_SAYS_NONE, tuple(name_reasons + physics_reasons))
    if physics == ECHO_PLANAR:
        return SeriesRole(series, None, HEADER_SAYS_NONE, tuple(physics_reasons + name_reasons))

    if physics in ROLES:
        role = physics
        if name_role == physics:
            confidence = AGREE
        elif name_role is None and (name_weak is None or ROLE_WORDS[physics].search(name.lower())):
            # The name says nothing, or names this role among others ("pd+t2_tse": the T2 echo).
            confidence = PHYSICS_ONLY
        else:
            confidence = CONFLICT
            said = name_role or name_weak
            reasons.append(f"the name says {said} but the physics says {physics}: the physics is kept")
        reasons = physics_reasons + name_reasons + reasons
    elif physics is not None:  # another kind of sequence: STIR, PD, T2*, MP2RAGE's second inversion
        role = None
        confidence = CONFLICT if name_role else NAME_SAYS_NONE
        reasons = physics_reasons + name_reasons
        if name_role:
            reasons.append(f"the name says {name_role} but the physics says {physics}: the physics is kept")
    elif name_role:
        role, confidence = name_role, NAME_ONLY
        reasons = name_reasons + physics_reasons + ["the header physics does not decide: the role comes from the name alone"]
    else:
        role = None
        confidence = NAME_SAYS_NONE if name_weak else UNKNOWN
        reasons = name_reasons + physics_reasons
        if not name_weak:
            reasons.append("neither the name nor the header physics identify the sequence")

    post_contrast = False
    if role is not None:
        header, name_contrast, contrast_reasons = _contrast(
            series, name, trust_contrast_header=trust_contrast_header, study_records_contrast=study_records_contrast)
        if header == "agent":
            post_contrast = True
            if name_contrast == "pre":
                confidence -= CONTRAST_CONFLICT_PENALTY
                contrast_reasons.append("the name disagrees with the header: the header is kept")
        elif header == "none" or study_records_contrast:
            if name_contrast == "post":
                confidence -= CONTRAST_CONFLICT_PENALTY
                contrast_reasons.append("the name says after contrast but the header says otherwise: the header is kept")
        elif name_contrast == "post":
            post_contrast = True
            if role == "T1":
                confidence = min(confidence, CONTRAST_FROM_NAME_ONLY)
                contrast_reasons.append("only the name says after contrast (many scanners leave the agent empty)")
        if role == "T1" and post_contrast:
            role = "T1CE"
        if role != "T1CE" and post_contrast:
            contrast_reasons.append(f"a {role} acquired after contrast")
        if role in ("T1", "T1CE") or post_contrast:
            reasons += contrast_reasons

    derived = False
    if role is not None:
        why = _is_derived(series, name)
        if why:
            derived = True
            confidence -= DERIVED_PENALTY
            reasons.append(f"{why}: the original acquisition is preferred")
    return SeriesRole(series, role, round(max(0.0, min(1.0, confidence)), 2), tuple(reasons), derived, post_contrast)


def identify_all(series: Sequence[DicomSeries]) -> list[SeriesRole]:
    """The role of every series of ONE study, in the order given (see :func:`identify_series`).

    The study as a whole says how its scanner records contrast: when some series name an
    agent and others do not, an empty field means "before the injection", so a name
    saying "post" does not make a T1CE on its own. When every series names the same agent,
    the first one (the localizer) too, the agent was entered for the whole exam and the
    field is ignored. When every series carries one ProtocolName (GE writes the site's
    protocol there, e.g. ``MS BRAIN``) it names the study, not the series, and is not read.
    """
    series = list(series)
    agents = [" ".join(v for v in (s.contrast_bolus_agent, s.contrast_bolus_ingredient) if v).strip().lower() for s in series]
    named = [a for a in agents if a and a not in NO_AGENT_VALUES]
    everywhere = len(series) > 1 and len(named) == len(series) and len(set(named)) == 1
    records = bool(named) and not everywhere
    protocols = {s.protocol_name for s in series}
    site_protocol = len(series) > 1 and len(protocols) == 1 and "" not in protocols and len({s.series_description for s in series}) > 1
    return [identify_series(s, trust_contrast_header=not everywhere, study_records_contrast=records and not agent,
                            use_protocol_name=not site_protocol)
            for s, agent in zip(series, agents)]


# ----------------------------------------------------------------------------- choosing


def _candidate(role: SeriesRole) -> str:
    s = role.series
    return f"{s.label} ({s.n_images} images, confidence {role.confidence:.2f}, {s.series_uid})"


def _listing(roles: Sequence[SeriesRole]) -> str:
    return "; ".join(f"{r.series.label} ({r.series.n_images} images, {r.role or 'no role'}, {r.series.series_uid})" for r in roles)


def _preferred(candidates: list[SeriesRole], role: str) -> tuple[list[SeriesRole], list[str]]:
    """Apply the preferences of :func:`choose_series`: the candidates left, and what was set aside and why."""
    set_aside = []
    preferences = [
        ("an original acquisition is preferred to a derived reformat", lambda r: not r.derived),
        ("a series acquired before contrast is preferred", lambda r: role == "T1CE" or not r.post_contrast),
        ("a 3D acquisition is preferred to 2D", lambda r: r.series.mr_acquisition_type.upper() == "3D"),
        # Siemens saves distortion-corrected images (ImageType DIS2D/DIS3D) and, on request, the uncorrected twin (ND).
        ("distortion-corrected images are preferred to their uncorrected twin (ImageType ND)", lambda r: "ND" not in _values(r.series.image_type)),
    ]
    for why, keep in preferences:
        kept = [r for r in candidates if keep(r)]
        if kept and len(kept) < len(candidates):
            set_aside += [f"{r.series.label}: {why}" for r in candidates if not keep(r)]
            candidates = kept
    return candidates, set_aside


def choose_series(roles: Sequence[SeriesRole], needed: Sequence[str], *, optional: Sequence[str] = (),
                  overrides: Mapping[str, str] | None = None) -> dict[str, DicomSeries]:
    """One series per needed role (error when missing or ambiguous, listing candidates and the --series fix);
    optional roles are included only when one candidate stands out. overrides maps role -> SeriesInstanceUID
    and always wins (an unknown UID is an error that lists the UIDs found).

    Among the series identified with a role, preferences decide first, in this order:
    an original acquisition over a derived reformat (a 3D FLAIR and its axial MPR are one
    acquisition, not an ambiguity); for FLAIR, T1 and T2 a series acquired before contrast
    over one after; a 3D acquisition over 2D (the consensus protocol for MS recommends 3D
    FLAIR and T1; Wattjes et al. 2021, Lancet Neurol 20:653–670); distortion-corrected
    images over their uncorrected twin (Siemens ImageType ND). A preference applies only
    where it leaves at least one candidate. Of the candidates left,
    the most confident is taken when it leads the next by at least 0.2; otherwise the
    role is ambiguous. A series given in ``overrides`` is not chosen for another role.

    Returns a dict role → DicomSeries with the needed roles, the optional ones that stood
    out and every role in ``overrides``.
    """
    overrides = dict(overrides or {})
    for role in [*needed, *optional, *overrides]:
        if role not in ROLES:
            raise MSToolkitInputError(f"unknown sequence role '{role}'; the roles are {', '.join(ROLES)}.")
    by_uid = {r.series.series_uid: r.series for r in roles}
    chosen: dict[str, DicomSeries] = {}
    for role, uid in overrides.items():
        if uid not in by_uid:
            raise MSToolkitInputError(
                f"--series {role}={uid}: no series of this study has that SeriesInstanceUID; the series found are: {_listing(roles)}.")
        chosen[role] = by_uid[uid]
        log.info("%s: %s, as given with --series", role, by_uid[uid].label)
    taken = {s.series_uid for s in chosen.values()}

    for role in dict.fromkeys([*needed, *optional]):
        if role in chosen:
            continue
        required = role in needed
        candidates = [r for r in roles if r.role == role and r.series.series_uid not in taken]
        if not candidates:
            given = [(r, given_role) for r in roles if r.role == role for given_role, s in chosen.items() if s.series_uid == r.series.series_uid]
            if required and given:
                r, given_role = given[0]
                raise MSToolkitInputError(
                    f"the {role} found, {_candidate(r)}, is given as {given_role} with --series; "
                    f"name the {role} too with --series {role}=<SeriesInstanceUID>. The series are: {_listing(roles)}.")
            if required:
                raise MSToolkitInputError(
                    f"no series of this study was identified as {role} (see series.json for the reasons); the series are: "
                    f"{_listing(roles) or 'none'}. If one of them is the {role}, pass --series {role}=<SeriesInstanceUID>.")
            continue
        candidates, set_aside = _preferred(candidates, role)
        candidates.sort(key=lambda r: r.confidence, reverse=True)
        if len(candidates) > 1 and round(candidates[0].confidence - candidates[1].confidence, 2) < STANDS_OUT_MARGIN:
            if required:
                raise MSToolkitInputError(
                    f"{len(candidates)} series could be the {role}: {'; '.join(_candidate(r) for r in candidates)}. "
                    f"Look at them and choose one with --series {role}=<SeriesInstanceUID>.")
            log.info("%s left out: %d candidates of similar standing (%s)", role, len(candidates),
                     "; ".join(r.series.label for r in candidates))
            continue
        best = candidates[0]
        chosen[role] = best.series
        taken.add(best.series.series_uid)
        log.info("%s: %s (%s)", role, best.series.label, "; ".join(best.reasons))
        for line in set_aside:
            log.info("%s: %s set aside", role, line)
    return chosen


def parse_series_overrides(items: Sequence[str] | None) -> dict[str, str]:
    """["FLAIR=1.2.3", "T1=1.2.4"] -> {"FLAIR": "1.2.3", ...}; malformed items or unknown roles -> clear error.

    Roles are read case-insensitively (``flair=...``); a UID must be a DICOM UID (digits
    and dots, at most 64 characters; DICOM PS3.5 section 9.1). Giving one role two
    different UIDs is an error.
    """
    overrides: dict[str, str] = {}
    for item in items or ():
        role, equals, uid = str(item).partition("=")
        role, uid = role.strip().upper(), uid.strip()
        if not equals or not role or not uid:
            raise MSToolkitInputError(f"--series '{item}' is not ROLE=SeriesInstanceUID; write e.g. --series FLAIR=1.2.840.113619.2.55.3.1234.")
        if role not in ROLES:
            raise MSToolkitInputError(f"--series '{item}': unknown role '{role}'; the roles are {', '.join(ROLES)}.")
        if len(uid) > 64 or not re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*", uid):
            raise MSToolkitInputError(
                f"--series '{item}': '{uid}' is not a SeriesInstanceUID (digits and dots, at most 64 characters); "
                "copy it from series.json or the error that listed the candidates.")
        if overrides.get(role, uid) != uid:
            raise MSToolkitInputError(f"--series gives {role} twice ({overrides[role]} and {uid}); give each role once.")
        overrides[role] = uid
    return overrides


def series_table(roles: Sequence[SeriesRole]) -> list[dict]:
    """Rows for series.json: series_instance_uid, series_number, description, n_images, role (or None),
    confidence, reasons (list). No patient identifiers."""
    return [
        {
            "series_instance_uid": r.series.series_uid,
            "series_number": r.series.series_number,
            "description": r.series.description,
            "n_images": r.series.n_images,
            "role": r.role,
            "confidence": r.confidence,
            "reasons": list(r.reasons),
        }
        for r in roles
    ]
