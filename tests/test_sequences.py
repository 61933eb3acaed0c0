"""Sequence identification from DICOM headers: a table of vendor header sets, the traps, choosing, overrides."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from mstoolkit.clinical.dicom_series import DicomSeries, find_series, write_dicom_series
from mstoolkit.clinical.sequences import (
    ROLES,
    SeriesRole,
    choose_series,
    identify_all,
    identify_series,
    parse_series_overrides,
    series_table,
)
from mstoolkit.data.io import MSToolkitInputError

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ORIGINAL = "ORIGINAL\\PRIMARY\\M\\ND"


def mr(description: str, *, tr=None, te=None, ti=None, scanning="SE", variant="SP", acquisition="2D", image_type=ORIGINAL,
       agent="", ingredient="", number=1, n_images=40, uid=None, modality="MR", sop=MR_IMAGE_STORAGE, sequence_name="",
       protocol=None) -> DicomSeries:
    """A series as find_series would give it, without files on disk."""
    return DicomSeries(
        study_uid="1.2.3", series_uid=uid or generate_uid(), series_number=number, modality=modality,
        series_description=description, protocol_name=description if protocol is None else protocol,
        repetition_time=tr, echo_time=te, inversion_time=ti, scanning_sequence=scanning, sequence_variant=variant,
        image_type=image_type, mr_acquisition_type=acquisition, contrast_bolus_agent=agent, sop_class_uid=sop,
        files=tuple(Path(f"/no/such/{k:04d}") for k in range(n_images)),
        contrast_bolus_ingredient=ingredient, sequence_name=sequence_name,
    )


# (id, series, expected role): realistic header sets of Siemens, GE, Philips and Canon scanners.
HEADER_TABLE = [
    # Siemens (syngo MR): protocol names are the series descriptions.
    ("siemens-scout", mr("AAHead_Scout_64ch-head-coil", tr=8.6, te=4.0, scanning="GR", image_type="ORIGINAL\\PRIMARY\\M\\NORM\\DIS2D"), None),
    ("siemens-localizer", mr("localizer", tr=8.6, te=4.0, scanning="GR"), None),
    ("siemens-3d-flair", mr("t2_spc_da-fl_sag_p2_iso", tr=5000, te=387, ti=1800, scanning="SE\\IR", variant="SK\\SP\\MP", acquisition="3D"),
     "FLAIR"),
    ("siemens-2d-flair", mr("t2_tirm_tra_dark-fluid", tr=9000, te=81, ti=2500, scanning="SE\\IR", variant="SK\\SP\\OSP"), "FLAIR"),
    ("siemens-stir", mr("t2_tirm_cor", tr=5000, te=56, ti=150, scanning="SE\\IR", variant="SK\\SP\\OSP"), None),
    ("siemens-t2", mr("t2_tse_tra_p2", tr=6000, te=101, variant="SK\\SP\\OSP"), "T2"),
    ("siemens-dual-echo-t2", mr("pd+t2_tse_tra_p2", tr=3000, te=90), "T2"),
    ("siemens-dual-echo-pd", mr("pd+t2_tse_tra_p2", tr=3000, te=11), None),
    ("siemens-mprage", mr("t1_mprage_sag_p2_iso", tr=2300, te=2.32, ti=900, scanning="GR\\IR", variant="SK\\SP\\MP", acquisition="3D"), "T1"),
    ("siemens-mprage-agent", mr("t1_mprage_sag_p2_iso", tr=2300, te=2.32, ti=900, scanning="GR\\IR", acquisition="3D", agent="Gadovist"),
     "T1CE"),
    ("siemens-mprage-ingredient", mr("t1_mprage_sag_p2_iso", tr=2300, te=2.32, ti=900, scanning="GR\\IR", acquisition="3D",
                                     ingredient="GADOLINIUM"), "T1CE"),
    ("siemens-mprage-km", mr("t1_mprage_sag_p2_iso_KM", tr=2300, te=2.32, ti=900, scanning="GR\\IR", acquisition="3D"), "T1CE"),
    ("siemens-mprage-nach-km", mr("t1 mprage tra nach KM", tr=2300, te=2.32, ti=900, scanning="GR\\IR", acquisition="3D"), "T1CE"),
    ("siemens-mprage-ohne-km", mr("t1_mprage_tra_ohne_KM", tr=2300, te=2.32, ti=900, scanning="GR\\IR", acquisition="3D"), "T1"),
    ("siemens-t1-se-nativ", mr("t1_se_tra_nativ", tr=550, te=8.9), "T1"),
    ("siemens-dwi", mr("ep2d_diff_3scan_trace_p2_TRACEW", tr=5000, te=90, scanning="EP",
                       image_type="ORIGINAL\\PRIMARY\\DIFFUSION\\TRACEW\\ND\\NORM"), None),
    ("siemens-adc", mr("ep2d_diff_3scan_trace_p2_ADC", tr=5000, te=90, scanning="EP", image_type="DERIVED\\PRIMARY\\DIFFUSION\\ADC\\ND\\NORM"),
     None),
    ("siemens-diffusion-sequence-name", mr("research_tra_1", tr=5000, te=90, scanning="SE", sequence_name="*ep_b1000t"), None),
    ("siemens-swi", mr("t2_swi3d_tra_p2_1.5mm_SWI", tr=27, te=20, scanning="GR", acquisition="3D", image_type="ORIGINAL\\PRIMARY\\M\\SWI\\ND"),
     None),
    ("siemens-flair-mpr", mr("t2_spc_da-fl_sag_p2_iso_MPR_tra", tr=5000, te=387, ti=1800, scanning="SE\\IR", acquisition="3D",
                             image_type="DERIVED\\PRIMARY\\MPR\\ND"), "FLAIR"),
    ("siemens-mp2rage-inv2", mr("t1_mp2rage_sag_p3_INV2", tr=5000, te=2.9, ti=2500, scanning="GR\\IR", acquisition="3D"), None),
    ("siemens-dir", mr("3D_DIR_SPACE_sag", tr=7500, te=355, ti=3000, scanning="SE\\IR", acquisition="3D"), None),
    ("echo-planar", mr("Ax 5mm", tr=3000, te=90, scanning="EP"), None),
    ("siemens-tof", mr("tof_fl3d_tra_p2_multi-slab", tr=21, te=3.4, scanning="GR", acquisition="3D"), None),
    # GE (Signa): descriptions such as "Ax T2 FLAIR"; TI 0 where there is no inversion.
    ("ge-3plane-loc", mr("3Plane Loc SSFSE", tr=1300, te=80, image_type="ORIGINAL\\PRIMARY\\LOCALIZER"), None),
    ("ge-localizer-by-image-type", mr("Ax SSFSE", tr=2500, te=90, image_type="ORIGINAL\\PRIMARY\\LOCALIZER"), None),
    ("ge-ax-t2-flair", mr("Ax T2 FLAIR", tr=9000, te=120, ti=2250, scanning="SE\\IR", variant="SK\\SS\\SP"), "FLAIR"),
    ("ge-cube-flair", mr("Sag CUBE FLAIR", tr=6000, te=130, ti=1826, scanning="SE\\IR", acquisition="3D"), "FLAIR"),
    ("ge-t1-flair", mr("Ax T1 FLAIR", tr=2200, te=24, ti=860, scanning="SE\\IR"), "T1"),
    ("ge-t1-flair-named-flair", mr("Ax FLAIR", tr=2000, te=20, ti=860, scanning="SE\\IR"), "T1"),
    ("ge-t1-flair-post", mr("Ax T1 FLAIR +C", tr=2200, te=24, ti=860, scanning="SE\\IR", agent="Gadavist 7 ml"), "T1CE"),
    ("ge-bravo", mr("Sag 3D BRAVO", tr=8.2, te=3.2, ti=450, scanning="GR", variant="SS\\SK", acquisition="3D"), "T1"),
    ("ge-bravo-post", mr("Ax 3D BRAVO +C", tr=8.2, te=3.2, ti=450, scanning="GR", acquisition="3D"), "T1CE"),
    ("ge-t2-fse", mr("Ax T2 FSE", tr=5000, te=100, ti=0), "T2"),
    ("ge-t2-propeller", mr("Ax T2 PROPELLER", tr=7000, te=110, ti=0), "T2"),
    ("ge-dwi", mr("Ax DWI 1000b", tr=6000, te=80, scanning="EP\\SE", image_type="ORIGINAL\\PRIMARY\\OTHER"), None),
    ("ge-adc", mr("Apparent Diffusion Coefficient (mm2/s)", tr=6000, te=80, scanning="EP\\SE", image_type="DERIVED\\SECONDARY\\OTHER"), None),
    ("ge-swan", mr("Ax SWAN", tr=40, te=25, scanning="GR", acquisition="3D"), None),
    ("ge-t2-star", mr("Ax T2* GRE", tr=650, te=15, scanning="GR"), None),
    ("ge-flair-reformat", mr("Ax CUBE FLAIR REFORMAT", tr=6000, te=130, ti=1826, scanning="SE\\IR", acquisition="3D",
                             image_type="DERIVED\\SECONDARY\\REFORMATTED\\AVERAGE"), "FLAIR"),
    # Philips (Ingenia): ScanningSequence IR for IR-TSE, GR for (T)FE; a DWI may say SE.
    ("philips-survey", mr("Survey", tr=11, te=4.6, scanning="GR", image_type="ORIGINAL\\PRIMARY\\M_FFE\\M\\FFE"), None),
    ("philips-3d-flair", mr("3D_Brain_VIEW_FLAIR", tr=4800, te=340, ti=1650, scanning="IR", variant="SK", acquisition="3D",
                            image_type="ORIGINAL\\PRIMARY\\M_IR\\M\\IR"), "FLAIR"),
    ("philips-2d-flair", mr("T2W_FLAIR_SENSE", tr=11000, te=125, ti=2800, scanning="IR"), "FLAIR"),
    ("philips-t1-tfe", mr("T1W_3D_TFE", tr=8.1, te=3.7, scanning="GR", acquisition="3D", image_type="ORIGINAL\\PRIMARY\\M_FFE\\M\\FFE"), "T1"),
    ("philips-t1-tfe-gd", mr("sT1W_3D_TFE_Gd", tr=8.1, te=3.7, scanning="GR", acquisition="3D"), "T1CE"),
    ("philips-t2-tse", mr("T2W_TSE", tr=3000, te=80), "T2"),
    ("philips-dwi-says-se", mr("DWI_SENSE", tr=3000, te=80, scanning="SE", image_type="ORIGINAL\\PRIMARY\\M_SE\\M\\SE"), None),
    ("philips-dadc", mr("dADC", tr=3000, te=80, scanning="SE", image_type="DERIVED\\PRIMARY\\M_SE"), None),
    ("philips-t1-gado", mr("T1W_SE +GADO", tr=500, te=10), "T1CE"),
    # Canon (Toshiba) Vantage.
    ("canon-flair", mr("FLAIR_AX", tr=10000, te=110, ti=2600, scanning="IR"), "FLAIR"),
    ("canon-t1-se", mr("T1W_SE_AX", tr=500, te=10), "T1"),
    ("canon-mprage", mr("3D_MPRAGE_SAG", tr=2200, te=3.0, ti=1100, scanning="GR\\IR", acquisition="3D"), "T1"),
    ("canon-t2", mr("T2W_FSE_AX", tr=4500, te=100), "T2"),
    # Other languages.
    ("italian-t1-mdc", mr("T1_SE_AX_MDC", tr=500, te=10), "T1CE"),
    ("spanish-sin-contraste", mr("T1 SPGR sin contraste", tr=8, te=3, scanning="GR", acquisition="3D"), "T1"),
    ("spanish-con-contraste", mr("T1 SPGR con contraste", tr=8, te=3, scanning="GR", acquisition="3D"), "T1CE"),
    ("french-sans-gado", mr("T1 3D sans gado", tr=8, te=3, scanning="GR", acquisition="3D"), "T1"),
    ("french-gado", mr("T1 3D gado", tr=8, te=3, scanning="GR", acquisition="3D"), "T1CE"),
    # Header traps.
    ("agent-none-beats-name", mr("t1_se_tra +C", tr=550, te=9, agent="NONE"), "T1"),
    ("agent-beats-nativ", mr("t1_se_tra_nativ", tr=550, te=9, agent="Dotarem"), "T1CE"),
    ("flair-name-only", mr("AX FLAIR"), "FLAIR"),
    ("nothing-known", mr("series 7"), None),
    ("not-mr", mr("AX FLAIR", tr=9000, te=90, ti=2500, scanning="SE\\IR", modality="SR", sop="1.2.840.10008.5.1.4.1.1.88.22"), None),
    ("secondary-capture", mr("AX FLAIR", tr=9000, te=90, ti=2500, scanning="SE\\IR", sop="1.2.840.10008.5.1.4.1.1.7"), None),
]


@pytest.mark.parametrize("series, expected", [row[1:] for row in HEADER_TABLE], ids=[row[0] for row in HEADER_TABLE])
def test_header_table(series, expected):
    identified = identify_series(series)
    assert identified.role == expected, identified.reasons
    assert 0.0 <= identified.confidence <= 1.0 and identified.reasons
    assert all(isinstance(reason, str) and reason for reason in identified.reasons)


def test_flair_reasons_name_the_csf_null_and_the_name():
    identified = identify_series(mr("t2_tirm_tra_dark-fluid", tr=9000, te=81, ti=2500, scanning="SE\\IR"))
    assert identified.role == "FLAIR" and identified.confidence >= 0.9
    assert any("TI 2500 ms" in r and "nulls CSF" in r for r in identified.reasons)
    assert any("dark-fluid" in r for r in identified.reasons)


def test_name_says_flair_physics_says_t1_physics_wins_with_less_confidence():
    named_flair = identify_series(mr("Ax FLAIR", tr=2000, te=20, ti=860, scanning="SE\\IR"))
    agreeing = identify_series(mr("Ax T1 FLAIR", tr=2000, te=20, ti=860, scanning="SE\\IR"))
    assert named_flair.role == agreeing.role == "T1"
    assert named_flair.confidence < agreeing.confidence
    assert any("physics is kept" in r for r in named_flair.reasons)


def test_confidence_follows_the_evidence():
    both = identify_series(mr("Ax T2 FLAIR", tr=9000, te=120, ti=2250, scanning="SE\\IR"))
    physics = identify_series(mr("Ax 5mm", tr=9000, te=120, ti=2250, scanning="SE\\IR"))
    name = identify_series(mr("Ax T2 FLAIR"))
    assert both.role == physics.role == name.role == "FLAIR"
    assert both.confidence > physics.confidence > name.confidence
    assert any("from the name alone" in r for r in name.reasons)


def test_contrast_from_the_name_alone_is_less_sure_than_from_the_header():
    header = identify_series(mr("t1_mprage_sag", tr=2300, te=2.3, ti=900, scanning="GR\\IR", agent="Gadovist"))
    name = identify_series(mr("t1_mprage_sag_KM", tr=2300, te=2.3, ti=900, scanning="GR\\IR"))
    conflict = identify_series(mr("t1_mprage_sag_nativ", tr=2300, te=2.3, ti=900, scanning="GR\\IR", agent="Gadovist"))
    assert header.role == name.role == conflict.role == "T1CE"
    assert header.confidence > name.confidence and header.confidence > conflict.confidence
    assert header.post_contrast and any("Gadovist" in r for r in header.reasons)


def test_a_post_contrast_flair_stays_flair():
    identified = identify_series(mr("Ax T2 FLAIR post", tr=9000, te=120, ti=2250, scanning="SE\\IR", agent="Gadavist"))
    assert identified.role == "FLAIR" and identified.post_contrast


# --------------------------------------------------------------------------- the study as a whole


def test_same_protocol_before_and_after_contrast_is_told_apart_by_the_header():
    pre = mr("t1_mprage_sag_p2_iso", tr=2300, te=2.32, ti=900, scanning="GR\\IR", acquisition="3D", number=5)
    post = mr("t1_mprage_sag_p2_iso", tr=2300, te=2.32, ti=900, scanning="GR\\IR", acquisition="3D", number=9, agent="Gadovist")
    flair = mr("t2_spc_da-fl_sag_p2_iso", tr=5000, te=387, ti=1800, scanning="SE\\IR", acquisition="3D", number=3)
    roles = identify_all([flair, pre, post])
    assert [r.role for r in roles] == ["FLAIR", "T1", "T1CE"]
    chosen = choose_series(roles, ["FLAIR", "T1"], optional=["T1CE"])
    assert chosen == {"FLAIR": flair, "T1": pre, "T1CE": post}


def test_a_name_saying_contrast_does_not_decide_where_the_study_records_agents():
    recorded = mr("t1_mprage_sag", tr=2300, te=2.3, ti=900, scanning="GR\\IR", agent="Gadovist", number=9)
    named_only = mr("t1_se_tra_KM", tr=550, te=9, number=7)
    roles = identify_all([named_only, recorded])
    assert [r.role for r in roles] == ["T1", "T1CE"]
    assert any("header says otherwise" in r for r in roles[0].reasons)
    # On its own (no other series recording an agent) the name is enough.
    assert identify_series(named_only).role == "T1CE"


def test_an_agent_on_every_series_is_ignored_and_the_names_decide():
    agent = "Dotarem"
    study = [mr("localizer", tr=8.6, te=4, scanning="GR", agent=agent, number=1),
             mr("t2_tirm_tra_dark-fluid", tr=9000, te=81, ti=2500, scanning="SE\\IR", agent=agent, number=2),
             mr("t1_mprage_sag", tr=2300, te=2.3, ti=900, scanning="GR\\IR", acquisition="3D", agent=agent, number=3),
             mr("t1_mprage_sag_KM", tr=2300, te=2.3, ti=900, scanning="GR\\IR", acquisition="3D", agent=agent, number=8)]
    roles = identify_all(study)
    assert [r.role for r in roles] == [None, "FLAIR", "T1", "T1CE"]
    assert not roles[1].post_contrast
    assert any("whole exam" in r for r in roles[2].reasons)


def test_a_site_protocol_on_every_series_is_not_read_as_a_series_name():
    # GE writes the site's protocol into ProtocolName of every series; "W/WO" is "with and without".
    study = [mr("3-Plane Loc", tr=5, te=1.6, scanning="GR", protocol="MS BRAIN W/WO", number=1),
             mr("Ax T2 FLAIR", tr=9000, te=141, ti=2250, scanning="SE\\IR", protocol="MS BRAIN W/WO", number=5),
             mr("Sag 3D BRAVO", tr=8.2, te=3.2, ti=450, scanning="GR\\IR", acquisition="3D", protocol="MS BRAIN W/WO", number=8),
             mr("Sag 3D BRAVO +C", tr=8.2, te=3.2, ti=450, scanning="GR\\IR", acquisition="3D", protocol="MS BRAIN W/WO", number=9)]
    roles = identify_all(study)
    assert [r.role for r in roles] == [None, "FLAIR", "T1", "T1CE"]
    assert not any("MS BRAIN" in reason for r in roles for reason in r.reasons)
    # A series on its own: "W/WO" says nothing about it, "W/O" (without) does.
    assert identify_series(mr("Ax T1 SE +C / BRAIN W/WO", tr=500, te=10)).role == "T1CE"
    assert identify_series(mr("Ax T1 SE W/O", tr=500, te=10)).role == "T1"


# --------------------------------------------------------------------------- choosing


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_3d_flair_and_its_reformat_are_not_an_ambiguity():
    original = mr("t2_spc_da-fl_sag_p2_iso", tr=5000, te=387, ti=1800, scanning="SE\\IR", acquisition="3D", number=4, n_images=176)
    reformat = mr("t2_spc_da-fl_sag_p2_iso_MPR_tra", tr=5000, te=387, ti=1800, scanning="SE\\IR", acquisition="3D", number=5,
                  image_type="DERIVED\\PRIMARY\\MPR\\ND")
    roles = identify_all([reformat, original])
    assert roles[0].derived and not roles[1].derived and roles[0].confidence < roles[1].confidence
    assert choose_series(roles, ["FLAIR"]) == {"FLAIR": original}


def test_two_similar_flairs_are_ambiguous_and_the_message_says_how_to_decide():
    first = mr("Ax T2 FLAIR", tr=9000, te=120, ti=2250, scanning="SE\\IR", number=4, n_images=28)
    repeat = mr("Ax T2 FLAIR", tr=9000, te=120, ti=2250, scanning="SE\\IR", number=12, n_images=30)
    roles = identify_all([first, repeat])
    with pytest.raises(MSToolkitInputError, match="2 series could be the FLAIR") as caught:
        choose_series(roles, ["FLAIR"])
    message = one_line(caught)
    for series in (first, repeat):
        assert series.series_uid in message and series.label in message and f"{series.n_images} images" in message
    assert "--series FLAIR=<SeriesInstanceUID>" in message
    # The override decides, and always wins.
    assert choose_series(roles, ["FLAIR"], overrides={"FLAIR": repeat.series_uid}) == {"FLAIR": repeat}


def test_preferences_3d_over_2d_and_before_over_after_contrast():
    flair_2d = mr("t2_tirm_tra_dark-fluid", tr=9000, te=81, ti=2500, scanning="SE\\IR", number=3)
    flair_3d = mr("t2_spc_da-fl_sag_p2_iso", tr=5000, te=387, ti=1800, scanning="SE\\IR", acquisition="3D", number=4)
    flair_post = mr("t2_spc_da-fl_sag_p2_iso", tr=5000, te=387, ti=1800, scanning="SE\\IR", acquisition="3D", number=10, agent="Gadovist")
    assert choose_series(identify_all([flair_2d, flair_3d]), ["FLAIR"]) == {"FLAIR": flair_3d}
    assert choose_series(identify_all([flair_post, flair_3d]), ["FLAIR"]) == {"FLAIR": flair_3d}


def test_a_reformat_is_taken_when_it_is_all_there_is():
    reformat = mr("Ax CUBE FLAIR REFORMAT", tr=6000, te=130, ti=1826, scanning="SE\\IR", acquisition="3D",
                  image_type="DERIVED\\SECONDARY\\REFORMATTED\\AVERAGE")
    assert choose_series(identify_all([reformat]), ["FLAIR"]) == {"FLAIR": reformat}


def test_the_distortion_corrected_twin_is_preferred():
    corrected = mr("t1_mprage_sag_p2_iso", tr=2300, te=2.32, ti=900, scanning="GR\\IR", acquisition="3D", number=5,
                   image_type="ORIGINAL\\PRIMARY\\M\\NORM\\DIS3D")
    uncorrected = mr("t1_mprage_sag_p2_iso_ND", tr=2300, te=2.32, ti=900, scanning="GR\\IR", acquisition="3D", number=6,
                     image_type="ORIGINAL\\PRIMARY\\M\\ND\\NORM")
    assert choose_series(identify_all([uncorrected, corrected]), ["T1"]) == {"T1": corrected}


def test_a_clear_candidate_stands_out_of_a_weak_one():
    strong = mr("Ax T2 FLAIR", tr=9000, te=120, ti=2250, scanning="SE\\IR", number=4)
    weak = mr("AX FLAIR", number=6)  # no physics in its header
    assert choose_series(identify_all([weak, strong]), ["FLAIR"]) == {"FLAIR": strong}


def test_missing_role_lists_the_series_and_the_fix():
    study = [mr("localizer", tr=8.6, te=4, scanning="GR", number=1),
             mr("t1_mprage_sag", tr=2300, te=2.3, ti=900, scanning="GR\\IR", acquisition="3D", number=3)]
    with pytest.raises(MSToolkitInputError, match="no series of this study was identified as FLAIR") as caught:
        choose_series(identify_all(study), ["FLAIR", "T1"])
    message = one_line(caught)
    assert all(s.series_uid in message for s in study) and "--series FLAIR=<SeriesInstanceUID>" in message


def test_optional_roles_only_when_one_stands_out():
    flair = mr("Ax T2 FLAIR", tr=9000, te=120, ti=2250, scanning="SE\\IR", number=4)
    t2_a = mr("Ax T2 FSE", tr=5000, te=100, number=5)
    t2_b = mr("Ax T2 FSE", tr=5000, te=100, number=6)
    assert choose_series(identify_all([flair, t2_a, t2_b]), ["FLAIR"], optional=["T2", "T1CE"]) == {"FLAIR": flair}
    assert choose_series(identify_all([flair, t2_a]), ["FLAIR"], optional=["T2"]) == {"FLAIR": flair, "T2": t2_a}


def test_override_errors_list_what_was_found():
    flair = mr("Ax T2 FLAIR", tr=9000, te=120, ti=2250, scanning="SE\\IR", number=4)
    t1 = mr("Ax T1 SE", tr=500, te=10, number=5)
    roles = identify_all([flair, t1])
    with pytest.raises(MSToolkitInputError, match="no series of this study has that SeriesInstanceUID") as caught:
        choose_series(roles, ["FLAIR"], overrides={"FLAIR": "1.2.3.4"})
    message = one_line(caught)
    assert flair.series_uid in message and t1.series_uid in message
    with pytest.raises(MSToolkitInputError, match="unknown sequence role 'PD'"):
        choose_series(roles, ["FLAIR"], overrides={"PD": flair.series_uid})
    # A series taken by an override is not chosen again for its own role.
    with pytest.raises(MSToolkitInputError, match="is given as FLAIR with --series"):
        choose_series(roles, ["FLAIR", "T1"], overrides={"FLAIR": t1.series_uid})


# --------------------------------------------------------------------------- --series and series.json


def test_parse_series_overrides():
    assert parse_series_overrides(None) == {} and parse_series_overrides([]) == {}
    assert parse_series_overrides(["FLAIR=1.2.3", " t1ce = 1.2.40.5 "]) == {"FLAIR": "1.2.3", "T1CE": "1.2.40.5"}
    assert parse_series_overrides(["T1=1.2.3", "T1=1.2.3"]) == {"T1": "1.2.3"}


@pytest.mark.parametrize("item, match", [
    ("FLAIR", "is not ROLE=SeriesInstanceUID"),
    ("=1.2.3", "is not ROLE=SeriesInstanceUID"),
    ("PD=1.2.3", "unknown role 'PD'; the roles are FLAIR, T1, T1CE, T2"),
    ("FLAIR=1.2.03", "is not a SeriesInstanceUID"),
    ("FLAIR=AX FLAIR", "is not a SeriesInstanceUID"),
    ("FLAIR=1." + "2" * 70, "is not a SeriesInstanceUID"),
])
def test_parse_series_overrides_refuses_malformed_items(item, match):
    with pytest.raises(MSToolkitInputError, match=match):
        parse_series_overrides([item])


def test_parse_series_overrides_refuses_one_role_twice():
    with pytest.raises(MSToolkitInputError, match="gives FLAIR twice"):
        parse_series_overrides(["FLAIR=1.2.3", "flair=1.2.4"])


def test_series_table_rows():
    flair = mr("Ax T2 FLAIR", tr=9000, te=120, ti=2250, scanning="SE\\IR", number=4, n_images=28)
    dwi = mr("Ax DWI 1000b", tr=6000, te=80, scanning="EP\\SE", number=7)
    rows = series_table(identify_all([flair, dwi]))
    assert json.loads(json.dumps(rows)) == rows
    assert set(rows[0]) == {"series_instance_uid", "series_number", "description", "n_images", "role", "confidence", "reasons"}
    assert rows[0]["series_instance_uid"] == flair.series_uid and rows[0]["series_number"] == 4 and rows[0]["n_images"] == 28
    assert rows[0]["role"] == "FLAIR" and rows[1]["role"] is None and isinstance(rows[1]["reasons"], list)
    assert ROLES == ("FLAIR", "T1", "T1CE", "T2") and isinstance(identify_series(flair), SeriesRole)


# --------------------------------------------------------------------------- end to end, through files


def test_a_written_study_is_read_back_and_identified(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(300.0, 50.0, (40, 48, 12)).astype(np.float32)
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    study = generate_uid()
    export = tmp_path / "export"

    def series(folder, **kwargs):
        return write_dicom_series(image, affine, export / folder, study_uid=study, **kwargs)

    series("1", description="localizer", tr=8.6, te=4.0, scanning_sequence="GR", series_number=1, mr_acquisition_type="2D")
    series("2", description="t2_spc_da-fl_sag_p2_iso", tr=5000, te=387, ti=1800, scanning_sequence="SE\\IR",
           sequence_variant="SK\\SP\\MP", series_number=2)
    series("3", description="t1_mprage_sag_p2_iso", tr=2300, te=2.32, ti=900, scanning_sequence="GR\\IR", series_number=3)
    series("4", description="ep2d_diff_3scan_trace_p2", tr=5000, te=90, scanning_sequence="EP", series_number=4, mr_acquisition_type="2D",
           image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW", "ND"))
    post = series("5", description="t1_mprage_sag_p2_iso", tr=2300, te=2.32, ti=900, scanning_sequence="GR\\IR", series_number=5)
    for path in post:  # the agent's ingredient, as a scanner records it after the injection
        ds = pydicom.dcmread(path)
        ds.ContrastBolusIngredient = "GADOLINIUM"
        ds.save_as(path)

    found = find_series(export).series
    roles = identify_all(found)
    assert [(r.series.series_number, r.role) for r in roles] == [(1, None), (2, "FLAIR"), (3, "T1"), (4, None), (5, "T1CE")]
    assert found[4].contrast_bolus_ingredient == "GADOLINIUM"
    chosen = choose_series(roles, ["FLAIR", "T1"], optional=["T1CE", "T2"])
    assert {role: s.series_number for role, s in chosen.items()} == {"FLAIR": 2, "T1": 3, "T1CE": 5}
    rows = series_table(roles)
    assert "PHANTOM" not in json.dumps(rows)
