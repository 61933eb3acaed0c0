"""Make private names that other modules import public in their home module (drop the underscore).

usage: python publicise.py ROOT [module ...]   (modules as stems: metrics, plots, ...; default: all)
Only files under mstoolkit/, tests/, benchmarks/ and notebooks/ are rewritten. A name is renamed in its
home module and in every file that imports it from there (by ast); collisions stop the script.
"""
import ast, json, pathlib, re, sys, collections

root = pathlib.Path(sys.argv[1])
only = set(sys.argv[2:])
NAMES = json.loads(pathlib.Path(__file__).with_name("names.json").read_text())  # "module._old": "new"
pkg = root / "mstoolkit"

def mod_of(path):
    rel = path.relative_to(pkg).with_suffix("")
    return ".".join(rel.parts)

def resolve(node, path):
    if node.level == 0:
        m = node.module or ""
        return m[len("mstoolkit."):] if m.startswith("mstoolkit.") else None
    base = mod_of(path).split(".")[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))

wanted = collections.defaultdict(set)  # home module -> names
users = collections.defaultdict(set)   # (home, name) -> files
files = [p for p in pkg.rglob("*.py")]
for path in files:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            home = resolve(node, path)
            if home is None or home == mod_of(path):
                continue
            for alias in node.names:
                n = alias.name
                if n.startswith("_") and not n.startswith("__"):
                    if only and home.split(".")[-1] not in only:
                        continue
                    wanted[home].add(n)
                    users[(home, n)].add(path)
# tests/benchmarks using the same names from those modules
extra = list((root / "tests").rglob("*.py")) + list((root / "benchmarks").rglob("*.py"))
for path in extra:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mstoolkit."):
            home = node.module[len("mstoolkit."):]
            for alias in node.names:
                if alias.name in wanted.get(home, ()):
                    users[(home, alias.name)].add(path)
def module_aliases(path, home):
    """Names bound to module ``home`` in ``path`` (``from mstoolkit import home [as x]``, ``import mstoolkit.home as x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "mstoolkit":
            found |= {a.asname or a.name for a in node.names if a.name == home}
        elif isinstance(node, ast.Import):
            found |= {a.asname for a in node.names if a.name == f"mstoolkit.{home}" and a.asname}
    return found


for home, names in sorted(wanted.items()):
    home_path = pkg / (home.replace(".", "/") + ".py")
    text = home_path.read_text()
    for n in sorted(names):
        new = NAMES.get(f"{home}.{n}", n.lstrip("_"))
        if re.search(rf"(?<![\w.]){re.escape(new)}\b", text):
            sys.exit(f"collision: {home}.{new} already exists")
    for n in sorted(names):
        new = NAMES.get(f"{home}.{n}", n.lstrip("_"))
        for path in {home_path} | users[(home, n)]:
            s = path.read_text()
            s2 = re.sub(rf"(?<![\w]){re.escape(n)}\b", new, s)
            path.write_text(s2)
        for path in extra:  # module.attribute uses in tests and benchmarks
            aliases = module_aliases(path, home)
            if aliases:
                s = path.read_text()
                s2 = re.sub(rf"\b({'|'.join(aliases)})\.{re.escape(n)}\b", rf"\1.{new}", s)
                if s2 != s:
                    path.write_text(s2)
        print(f"{home}.{n} -> {new}  ({len(users[(home, n)])} users)")
