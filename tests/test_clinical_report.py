"""The structured report: McDonald locations, dissemination in space and time, lesion load, report.json and report.html."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from mstoolkit.clinical.report import (
    COHORT_TABLE,
    MCDONALD_AREAS,
    RESEARCH_WARNING,
    build_report,
    dissemination_in_space,
    dissemination_in_time,
    lesion_load_percentile,
    lesion_locations,
    load_cohort_table,
    mni_anatomy,
    register_to_mni,
    write_report_html,
)
from mstoolkit.data.datasets import list_cases, real_sample_dir
from mstoolkit.data.io import MSToolkitInputError
from mstoolkit.phantom.anatomy import MNI_AFFINE
from mstoolkit.preprocessing.preprocess import load_mni_template
from mstoolkit.preprocessing.registration import resample_to_reference
from mstoolkit.segmentation.inference import lesion_report

# --------------------------------------------------------------------------- controlled lesions on the template

CUBE = np.ones((3, 3, 3), bool)


def near(region: np.ndarray, voxel: np.ndarray, radius: float) -> np.ndarray:
    """The voxels of ``region`` within ``radius`` voxels of ``voxel``."""
    grid = np.indices(region.shape)
    return region & (np.sum((grid - voxel[:, None, None, None]) ** 2, axis=0) <= radius**2)


def middle(region: np.ndarray) -> np.ndarray:
    """One voxel of a region (the middle one in index order: reproducible)."""
    points = np.argwhere(region)
    assert len(points), "empty region"
    return points[len(points) // 2]


@pytest.fixture(scope="module")
def template_case():
    """The 2 mm MNI template as the subject (registration is the identity) and one lesion per class.

    The periventricular and cortical lesions lie in the one-voxel shell around their structure, so they
    touch it only through the rule's dilation; the infratentorial one touches the fourth ventricle too,
    so only the rule's order makes it infratentorial.
    """
    template, brain, affine = load_mni_template(resolution=2)
    anatomy = {name: resample_to_reference(region.astype(np.uint8), MNI_AFFINE, template.shape, affine, is_mask=True).astype(bool)
               for name, region in mni_anatomy().items()}
    distance = {name: ndi.distance_transform_edt(~anatomy[name]) for name in ("ventricles", "cortex", "infratentorial")}
    shell = {name: ndi.binary_dilation(anatomy[name], CUBE) & ~anatomy[name] for name in ("ventricles", "cortex")}
    inside = ndi.distance_transform_edt(anatomy["brain"])
    periventricular = shell["ventricles"] & (distance["cortex"] > 6) & (distance["infratentorial"] > 6)
    cortical = shell["cortex"] & (inside > 3) & (distance["ventricles"] > 8) & (distance["infratentorial"] > 8)
    infratentorial = anatomy["infratentorial"] & ~anatomy["ventricles"] & (distance["cortex"] > 3)
    deep = anatomy["brain"] & (distance["ventricles"] > 6) & (distance["cortex"] > 6) & (distance["infratentorial"] > 6)
    lesions = {
        "periventricular": near(periventricular, middle(periventricular), 2.5),
        "cortical_juxtacortical": near(cortical, middle(cortical), 1.5),
        "infratentorial": near(infratentorial, middle(infratentorial & shell["ventricles"]), 1.5),
        "deep_white_matter": near(deep, middle(deep), 3.0),
    }
    return template, brain, affine, lesions


def combine(lesions: dict, names: list[str]) -> np.ndarray:
    mask = np.zeros(next(iter(lesions.values())).shape, np.uint8)
    for name in names:
        mask[lesions[name]] = 1
    return mask


def test_locations_follow_the_rule_on_the_template(template_case):
    """A lesion next to a ventricle, at the cortex, in the posterior fossa and in deep white matter gets its class."""
    template, brain, affine, lesions = template_case
    order = sorted(lesions, key=lambda name: -int(lesions[name].sum()))  # lesion ids go largest first
    assert len({int(lesions[name].sum()) for name in order}) == 4  # so the ids say which lesion is which
    labels, locations, registration = lesion_locations(combine(lesions, order), affine, template, brain_mask=brain, to_mni=np.eye(4))
    assert locations == order
    assert [int((labels == k).sum()) for k in range(1, 5)] == [int(lesions[name].sum()) for name in order]
    assert registration["mni_volume_scale"] == pytest.approx(1.0)
    counts = {area: locations.count(area) for area in MCDONALD_AREAS}
    dis = dissemination_in_space(counts)
    assert dis["met"] and dis["areas"] == list(MCDONALD_AREAS)


def test_only_deep_lesions_do_not_disseminate_in_space(template_case):
    template, brain, affine, lesions = template_case
    mask = combine(lesions, ["deep_white_matter"])
    _, locations, _ = lesion_locations(mask, affine, template, brain_mask=brain, to_mni=np.eye(4))
    assert locations == ["deep_white_matter"]
    dis = dissemination_in_space({area: locations.count(area) for area in MCDONALD_AREAS})
    assert not dis["met"] and dis["areas"] == []
    assert "only 0 of 4" in dis["reason"] and "spinal cord was not imaged" in dis["reason"]
    assert "MRI alone never makes the diagnosis" in dis["note"]


def test_registration_of_the_template_to_itself_is_near_identity(template_case):
    template, brain, affine, _ = template_case
    info = register_to_mni(template, affine, brain_mask=brain, working_spacing=4.0, iterations=40)
    to_mni = np.array(info["to_mni"])
    corners = np.array([[-60.0, -90, -40], [60, 60, 70], [0, 0, 0]])
    moved = corners @ to_mni[:3, :3].T + to_mni[:3, 3]
    assert np.abs(moved - corners).max() < 4.0
    assert info["quality"] > 0.9 and info["warning"] is None
    assert info["mni_volume_scale"] == pytest.approx(1.0, abs=0.08)


def test_a_poor_registration_is_flagged(template_case):
    """Half a brain cannot match the template's whole brain: the quality falls and a warning says so."""
    template, brain, affine, _ = template_case
    half = brain.copy()
    half[: half.shape[0] // 2] = 0
    info = register_to_mni(template, affine, brain_mask=half, working_spacing=4.0, iterations=20)
    assert info["quality"] < 0.8 and "Registration to MNI is poor" in info["warning"]


def test_location_input_errors(template_case):
    template, brain, affine, _ = template_case
    with pytest.raises(MSToolkitInputError, match="'sequence' must be one of"):
        lesion_locations(np.zeros(template.shape, np.uint8), affine, template, sequence="DWI")
    with pytest.raises(MSToolkitInputError, match="mask"):
        lesion_locations(np.zeros((4, 4, 4), np.uint8), affine, template)
    with pytest.raises(MSToolkitInputError, match="empty"):
        register_to_mni(np.zeros(template.shape, np.float32), affine)


# --------------------------------------------------------------------------- McDonald 2017


def test_dissemination_in_space_counts_areas_not_lesions():
    assert not dissemination_in_space({"periventricular": 12, "deep_white_matter": 9})["met"]
    dis = dissemination_in_space({"periventricular": 1, "infratentorial": 1})
    assert dis["met"] and dis["spinal_cord"] == "not imaged" and "2 of 4" in dis["reason"]
    assert "Thompson" in dis["criteria"]
    with pytest.raises(MSToolkitInputError, match="whole number"):
        dissemination_in_space({"periventricular": -1})


def test_dissemination_in_time_needs_a_new_lesion():
    dit = dissemination_in_time(1, 0)
    assert dit["met"] and dit["new_lesions"] == 1
    dit = dissemination_in_time(0, 3)
    assert not dit["met"] and "3 enlarging" in dit["reason"]
    assert "post-contrast analysis" in dit["note"] and "irrespective of its timing" in dit["criteria"]
    with pytest.raises(MSToolkitInputError, match="'new_lesions' must be a whole number"):
        dissemination_in_time(-1, 0)


# --------------------------------------------------------------------------- lesion load


def test_cohort_table_is_the_28_open_ms_data_patients():
    rows = load_cohort_table()
    assert len(rows) == 28
    ids = {row["patient_id"] for row in rows}
    assert "patient07" not in ids and "patient19" not in ids and "patient26" in ids
    header = COHORT_TABLE.read_text()
    assert "Lesjak" in header and "CC-BY" in header and "patient07, patient19" in header


def test_percentile_is_monotonic_and_bounded():
    volumes = [float(row["lesion_volume_ml_mni"]) for row in load_cohort_table()]
    grid = np.linspace(0, max(volumes) * 1.2, 60)
    percentiles = [lesion_load_percentile(v)["percentile"] for v in grid]
    assert np.all(np.diff(percentiles) >= 0) and percentiles[-1] > percentiles[0]
    assert lesion_load_percentile(min(volumes) * 0.5)["percentile"] == 0.0
    assert lesion_load_percentile(max(volumes) * 1.5)["percentile"] == 100.0
    result = lesion_load_percentile(10.0)
    assert result["cohort_size"] == 28 and "not healthy norms" in result["cohort"] and "Lesjak" in result["citation"]
    with pytest.raises(MSToolkitInputError, match="'volume_ml_mni' must be"):
        lesion_load_percentile(-1.0)


# --------------------------------------------------------------------------- the real patient26


@pytest.fixture(scope="module")
def patient26():
    case = list_cases(real_sample_dir())[0].load()
    flair, mask = case.images["FLAIR"], case.mask
    report = build_report(mask, mask.astype(np.float32), case.affine, flair, changes={"new_lesions": 2, "enlarging_lesions": 1,
                          "shrinking_lesions": 0}, model={"name": "consensus <mask>"})
    return flair, mask, case.affine, report


def test_patient26_is_mostly_periventricular_and_disseminates_in_space(patient26):
    flair, mask, affine, report = patient26
    json.dumps(report)  # report.json content: plain JSON types only
    locations = [row["location"] for row in report["lesions"]]
    assert report["lesion_count"] == len(locations) == 19
    assert locations.count("periventricular") > len(locations) / 2  # Dawson's fingers
    assert report["locations"]["spinal_cord"] == "not imaged"
    assert report["dissemination_in_space"]["met"]
    # The lesion rows are lesion_report's (ids, volumes, order), with a location added.
    expected = lesion_report(mask.astype(np.float32), mask, affine)["lesions"]
    assert [{k: v for k, v in row.items() if k != "location"} for row in report["lesions"]] == expected
    assert report["registration"]["quality"] > 0.9 and report["warnings"] == []
    # patient26 is in the cohort: carried into template space, its volume is the table's (same registration).
    table = {row["patient_id"]: float(row["lesion_volume_ml_mni"]) for row in load_cohort_table()}
    assert report["total_lesion_volume_ml_mni"] == pytest.approx(table["patient26"], rel=0.05)
    assert report["total_lesion_volume_ml"] == pytest.approx(mask.sum() / 1000, abs=1e-3)
    # 9 of the 28 cohort volumes are smaller, patient26 itself about ties: the 32nd-34th percentile.
    assert 30.0 <= report["lesion_load"]["percentile"] <= 36.0
    assert report["dissemination_in_time"]["met"] and report["new_lesions"] == 2 and report["changes"]["shrinking_lesions"] == 0


def test_report_without_a_prior_does_not_assess_time(template_case):
    template, brain, affine, lesions = template_case
    mask = combine(lesions, ["periventricular"])
    report = build_report(mask, mask * 0.9, affine, template, brain_mask=brain, to_mni=np.eye(4))
    assert report["dissemination_in_time"]["met"] is None and "new_lesions" not in report
    assert report["lesions"][0]["location"] == "periventricular" and report["lesion_load"]["cohort_size"] == 28
    with pytest.raises(MSToolkitInputError, match="'changes' has no 'new_lesions'"):
        build_report(mask, mask * 0.9, affine, template, to_mni=np.eye(4), changes={"enlarging_lesions": 0})


def test_html_report_is_self_contained_and_escaped(patient26, tmp_path):
    flair, mask, affine, report = patient26
    path = write_report_html(report, flair, mask, affine, tmp_path / "report.html", limitations="<script>alert(1)</script> limits")
    page = path.read_text()
    assert RESEARCH_WARNING in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)  # nothing loaded from elsewhere
    assert page.count('src="data:image/png;base64,') == 3
    lesion_table = page.split("<h2>Lesions</h2>")[1].split("<h2>")[0]
    assert lesion_table.count("<tr>") == 1 + len(report["lesions"])
    assert lesion_table.count("<td>periventricular</td>") == [r["location"] for r in report["lesions"]].count("periventricular")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; limits" in page and "<script>" not in page
    assert "consensus &lt;mask&gt;" in page  # the model table is escaped too
    assert "not healthy norms" in page and "Lesjak" in page
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left


def test_html_report_refuses_a_missing_folder(patient26, tmp_path):
    flair, mask, affine, report = patient26
    with pytest.raises(MSToolkitInputError, match="does not exist"):
        write_report_html(report, flair, mask, affine, tmp_path / "missing" / "report.html")
    with pytest.raises(MSToolkitInputError, match="no 'lesions'"):
        write_report_html({}, flair, mask, affine, tmp_path / "report.html")


def test_cohort_table_builder_lists_missing_patients_and_scales_volumes(tmp_path):
    """The build script on a tiny open_ms_data folder: patient26 (for the scale) and one patient without a mask."""
    import importlib.util
    import shutil


    spec = importlib.util.spec_from_file_location("build_table", Path(__file__).parents[1] / "data_download" / "build_lesion_load_table.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    source = real_sample_dir() / "cross_sectional"
    target = tmp_path / "cross_sectional"
    shutil.copytree(source / "MNI" / "patient26", target / "MNI" / "patient26")
    (target / "patient_info.csv").write_text("patient_id,age,sex,ms_type,edss,criteria\n3,37,F,N/A,N/A,N/A\n26,40,F,RR,2.0,McDonald 2010\n")
    out = tmp_path / "lesion_load.csv"
    assert builder.main([str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert "no consensus mask: patient03." in text and "Lesjak" in text
    row = [line for line in text.splitlines() if line.startswith("patient26,")][0].split(",")
    scale = float(re.search(r"upstream MNI volume x ([0-9.]+)", text).group(1))
    assert 1.4 < scale < 1.8  # the upstream MNI brains are smaller than the MNI152 2009 template
    assert float(row[2]) == pytest.approx(8.227, abs=1e-3) and float(row[1]) == pytest.approx(8.227 * scale, abs=2e-3)
    assert row[3:] == ["19", "40", "F", "RR"]
    # A folder without the patient table is refused with a message, not a traceback.
    assert builder.main([str(tmp_path / "nowhere"), "--out", str(out)]) == 2


def test_percentile_among_the_same_sex_uses_only_that_group():
    table = load_cohort_table()
    women = sorted(float(row["lesion_volume_ml_mni"]) for row in table if row["sex"] == "F")
    men = sorted(float(row["lesion_volume_ml_mni"]) for row in table if row["sex"] == "M")
    # Just above the largest woman's load: 100 among women, less among all (some men have more).
    volume = women[-1] + 0.01
    result = lesion_load_percentile(volume, sex="F")
    assert result["same_sex"] == {"sex": "F", "cohort_size": len(women), "percentile": 100.0}
    assert len(women) + len(men) == result["cohort_size"]
    assert lesion_load_percentile(volume, sex="O")["same_sex"] is None
    assert lesion_load_percentile(volume)["same_sex"] is None
