"""Move mstoolkit's flat modules into rooms and rewrite every import (package, tests, benchmarks, notebooks, docs).

usage: python relayout.py REPO     (idempotent: modules already moved are left alone)
"""
import ast
import json
import pathlib
import re
import subprocess
import sys

repo = pathlib.Path(sys.argv[1]).resolve()
pkg = repo / "mstoolkit"

ROOMS = {
    "data": "Data in and out: NIfTI and cases, datasets on disk, downloads, importers, the shipped sample.",
    "phantom": "The synthetic MS phantom: anatomy, lesions, scanner profiles, datasets on disk.",
    "preprocessing": "From a scan to network input: registration, bias correction, skull stripping, normalisation, augmentation.",
    "segmentation": "The network: architectures, training, validation, inference.",
    "evaluation": "How good is a segmentation: metrics, per-lesion and per-cohort tables, reports.",
    "explain": "What is the network looking at: layer maps, input attributions and their sanity checks.",
    "uncertainty": "Where is the model unsure: sampling predictions, uncertainty maps, calibration.",
    "display": "Pictures and widgets: slice plots and the slice viewer.",
    "course": "Running the course: notebook runs, exercises and their checks.",
}

MOVES = {  # flat module -> room.module
    "io": "data.io", "fetch": "data.fetch", "archives": "data.archives", "datasets": "data.datasets",
    "download": "data.download", "importers": "data.importers", "data_commands": "data.commands",
    "phantom": "phantom.generator", "phantom_anatomy": "phantom.anatomy", "phantom_lesions": "phantom.lesions",
    "phantom_dataset": "phantom.dataset",
    "registration": "preprocessing.registration", "normalization": "preprocessing.normalization",
    "preprocess": "preprocessing.preprocess", "transforms": "preprocessing.transforms",
    "models": "segmentation.models", "train": "segmentation.train", "training_config": "segmentation.config",
    "training_data": "segmentation.training_data", "validation": "segmentation.validation",
    "inference": "segmentation.inference",
    "metrics": "evaluation.metrics", "metric_tables": "evaluation.metric_tables", "report": "evaluation.report",
    "interpret": "explain.interpret", "interpret_checks": "explain.interpret_checks",
    "uncertainty": "uncertainty.sampling", "calibration": "uncertainty.calibration",
    "plots": "display.plots", "viewer": "display.viewer",
    "runner": "course.runner", "exercises": "course.exercises",
}
# names that moved between modules before the rooms (old flat module, name) -> flat module now
MOVED_NAMES = {
    ("doctor", "release_memory"): "runtime", ("train", "pick_device"): "runtime",
    ("datasets", "ensure_phantom"): "phantom_dataset", ("datasets", "phantom_dir"): "phantom_dataset",
    ("datasets", "cli_prepare"): "phantom_dataset",
    ("download", "cli_download"): "data_commands", ("download", "cli_list"): "data_commands",
    ("importers", "cli_import"): "data_commands",
    ("train", "TrainConfig"): "training_config", ("train", "PRESETS"): "training_config",
    ("train", "LOSS_NAMES"): "training_config", ("train", "REFERENCE_TITLE"): "training_config",
}
NAMES = json.loads((pathlib.Path(__file__).with_name("names.json")).read_text())  # "module._old": "new"
TOP = {"cli", "doctor", "runtime"}


def new_module(flat: str) -> str:
    return MOVES.get(flat, flat)


def home_of(flat_module: str, name: str) -> tuple[str, str]:
    """Where ``name`` of old flat module lives now: (new dotted module without 'mstoolkit.', new name)."""
    renamed = NAMES.get(f"{flat_module}.{name}", name)
    flat = MOVED_NAMES.get((flat_module, name), flat_module)
    return new_module(flat), renamed


def flat_of(dotted: str) -> str | None:
    """'mstoolkit.X' or 'mstoolkit.room.X' -> the flat key used in MOVES, or None."""
    if not dotted.startswith("mstoolkit"):
        return None
    rest = dotted[len("mstoolkit."):] if dotted != "mstoolkit" else ""
    inverse = {v: k for k, v in MOVES.items()}
    return inverse.get(rest, rest)


# --------------------------------------------------------------------------- 1. move files
def git(*args):
    subprocess.run(["git", *args], cwd=repo, check=True)


for room, about in ROOMS.items():
    folder = pkg / room
    folder.mkdir(exist_ok=True)
    init = folder / "__init__.py"
    if not init.exists():
        modules = sorted(v.split(".")[1] for v in MOVES.values() if v.startswith(room + "."))
        init.write_text(f'"""{about}\n\nModules: {", ".join(f"``{m}``" for m in modules)}.\n"""\n')
for flat, target in MOVES.items():
    src = pkg / f"{flat}.py"
    dst = pkg / (target.replace(".", "/") + ".py")
    if src.exists() and not dst.exists():
        git("mv", str(src.relative_to(repo)), str(dst.relative_to(repo)))


DATA_DIRS = {"reference": "segmentation/reference", "sample_data": "data/sample_data", "real_lesions": "phantom/real_lesions"}
for old, new in DATA_DIRS.items():
    if (pkg / old).exists() and not (pkg / new).exists():
        git("mv", f"mstoolkit/{old}", f"mstoolkit/{new}")


# --------------------------------------------------------------------------- 2. rewrite imports
def module_of_path(path: pathlib.Path) -> str:
    parts = path.relative_to(repo).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    p = repo / dotted.replace(".", "/")
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def statements_for(node, here: str | None) -> list[str] | None:
    """The new import statements replacing one import node, or None when it imports nothing of mstoolkit."""
    if isinstance(node, ast.Import):
        out = []
        touched = False
        for alias in node.names:
            flat = flat_of(alias.name)
            if flat is None or alias.name == "mstoolkit":
                out.append(f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else ""))
                continue
            touched = True
            target = "mstoolkit." + new_module(flat)
            out.append(f"import {target}" + (f" as {alias.asname}" if alias.asname else f"  # was {alias.name}"))
        return out if touched else None
    if node.level:
        base = here.split(".")[:-1] if here else ["mstoolkit"]
        if node.level > 1:
            base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if not source.startswith("mstoolkit"):
        return None
    groups: dict[str, list[str]] = {}
    module_imports: dict[str, list[str]] = {}
    for alias in node.names:
        if source == "mstoolkit" or is_module(f"{source}.{alias.name}") or (
                flat_of(f"{source}.{alias.name}") in MOVES and source == "mstoolkit"):
            flat = alias.name if source == "mstoolkit" else flat_of(f"{source}.{alias.name}")
            if source == "mstoolkit" and alias.name == "__version__":
                groups.setdefault("mstoolkit", []).append("__version__")
                continue
            target = new_module(flat)
            room, _, leaf = target.rpartition(".")
            asname = alias.asname or (flat if leaf != flat else None)
            text = leaf + (f" as {asname}" if asname and asname != leaf else "")
            module_imports.setdefault(f"mstoolkit.{room}" if room else "mstoolkit", []).append(text)
            continue
        flat = flat_of(source)
        target, name = home_of(flat, alias.name)
        text = name + (f" as {alias.asname}" if alias.asname else "")
        groups.setdefault("mstoolkit." + target if target else "mstoolkit", []).append(text)
    out = []
    for target, names in sorted(module_imports.items()) + sorted(groups.items()):
        names = sorted(set(names), key=lambda n: (not n[0].isupper(), n.lower()))
        joined = ", ".join(names)
        line = f"from {target} import {joined}"
        if len(line) > 110:
            line = f"from {target} import (\n" + "".join(f"    {n},\n" for n in names) + ")"
        out.append(line)
    return out


def rewrite_source(text: str, here: str | None) -> str:
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return text
    lines = text.split("\n")
    edits = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            new = statements_for(node, here)
            if new is None:
                continue
            indent = re.match(r"\s*", lines[node.lineno - 1]).group(0)
            last = lines[node.end_lineno - 1]
            comment = ""
            code_end = node.end_col_offset
            if "#" in last[code_end:]:
                comment = "  " + last[code_end:].strip()
            prefix = lines[node.lineno - 1][: node.col_offset]
            suffix = last[code_end:] if not comment else ""
            block = [s.replace("\n", "\n" + indent) for s in new]
            replacement = (prefix + ("\n" + indent).join(block) + comment + suffix).split("\n")
            edits.append((node.lineno - 1, node.end_lineno, replacement))
    for start, end, replacement in sorted(edits, reverse=True):
        lines[start:end] = replacement
    return "\n".join(lines)


DOTTED = sorted(MOVES, key=len, reverse=True)


def rewrite_text(text: str) -> str:
    """Dotted references in prose, docstrings and strings: mstoolkit.X -> mstoolkit.room.X (and moved names)."""
    for (flat, name), now in MOVED_NAMES.items():
        text = re.sub(rf"\bmstoolkit\.{flat}\.{name}\b", f"mstoolkit.{new_module(now)}.{name}", text)
    for key, new in NAMES.items():
        flat, old = key.rsplit(".", 1)
        text = re.sub(rf"\bmstoolkit\.{flat}\.{re.escape(old)}\b", f"mstoolkit.{new_module(flat)}.{new}", text)
    for old, new in DATA_DIRS.items():
        text = re.sub(rf"\bmstoolkit/{old}/", f"mstoolkit/{new}/", text)
    for flat in DOTTED:
        own = [v.split(".")[1] for v in MOVES.values() if v.startswith(flat + ".")]
        guard = rf"(?!\.(?:{'|'.join(own)})\b)" if own else ""
        text = re.sub(rf"\bmstoolkit\.{flat}\b(?![\w/]){guard}", f"mstoolkit.{MOVES[flat]}", text)
        text = re.sub(rf"\bmstoolkit/{flat}\.py\b", f"mstoolkit/{MOVES[flat].replace('.', '/')}.py", text)
    return text


def process_py(path: pathlib.Path) -> None:
    text = path.read_text(encoding="utf-8")
    if path.name == "cli.py":  # commands name their module as a string, imported when the command runs
        text = re.sub(r'_handler\("(\w+)"', lambda m: f'_handler("{new_module(m.group(1))}"', text)
    # every relative import was written in the flat layout, so it is relative to mstoolkit/ itself
    new = rewrite_source(rewrite_text(text), None)
    if new != text:
        path.write_text(new, encoding="utf-8")


def process_notebook(path: pathlib.Path) -> None:
    nb = json.loads(path.read_text(encoding="utf-8"))
    changed = False
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        new = rewrite_text(source)
        new = rewrite_source(new, None) if cell["cell_type"] == "code" else new
        if new != source:
            cell["source"] = new.splitlines(keepends=True)
            changed = True
    if changed:
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


for path in sorted(pkg.rglob("*.py")) + sorted((repo / "tests").rglob("*.py")) + sorted((repo / "benchmarks").rglob("*.py")):
    process_py(path)
for path in sorted((repo / "notebooks").glob("*.ipynb")):
    process_notebook(path)
for path in [repo / "README.md", repo / "ARCHITECTURE.md", repo / "MODEL_CARD.md", *sorted((repo / "docs").glob("*.md")),
             *sorted(pkg.rglob("*.md")), repo / "binder" / "postBuild", repo / "Makefile", repo / "pyproject.toml"]:
    if path.exists():
        text = path.read_text(encoding="utf-8")
        new = rewrite_text(text)
        if new != text:
            path.write_text(new, encoding="utf-8")
FIXUPS = {  # file -> [(old, new)]: paths computed from a module's own location
    "mstoolkit/doctor.py": [('reference = Path(__file__).parent / "reference"',
                             'reference = Path(__file__).parent / "segmentation" / "reference"')],
    "mstoolkit/data/download.py": [('Path(__file__).resolve().parents[1] / "data_download"',
                                    'Path(__file__).resolve().parents[2] / "data_download"')],
    "mstoolkit/course/runner.py": [("_REPO_ROOT = Path(__file__).resolve().parent.parent",
                                    "_REPO_ROOT = Path(__file__).resolve().parents[2]")],
    "pyproject.toml": [('mstoolkit = ["py.typed", "*.pt", "reference/*", "real_lesions/*", "sample_data/**/*"]',
                        'mstoolkit = ["py.typed", "segmentation/reference/*", "phantom/real_lesions/*", "data/sample_data/**/*"]')],
}
for name, pairs in FIXUPS.items():
    path = repo / name
    text = path.read_text(encoding="utf-8")
    for old, new in pairs:
        text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")
print("moved and rewritten")
