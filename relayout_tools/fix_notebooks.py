"""Notebook fixes of the house-plan step: the setup cell without its unused `import mstoolkit`."""
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1], "notebooks").glob("*.ipynb")):
    nb = json.loads(path.read_text(encoding="utf-8"))
    changed = False
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        new = source.replace("import mstoolkit\nfrom mstoolkit.doctor import describe_runtime", "from mstoolkit.doctor import describe_runtime")
        if new != source:
            cell["source"] = new.splitlines(keepends=True)
            changed = True
    if changed:
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print("fixed", path.name)
