"""Regenerate data_download/open_ms_data.json from a MANIFEST.tsv of the upstream repository.

The TSV lists every file of muschellij2/open_ms_data at the pinned commit with its
git blob SHA-1, its size when known and its SHA-256 when known. Run it only when
the pinned commit changes:

    python data_download/make_open_ms_manifest.py ../shared/data/open_ms_data/MANIFEST.tsv

The JSON it writes is committed; the downloader never reads the TSV.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

COMMIT = "65704901f60650824565aa5a4818611aa89716f4"
HERE = Path(__file__).resolve().parent

HEADER = {
    "name": "open_ms_data",
    "title": "Ljubljana MS lesion databases (cross-sectional 30 patients, longitudinal 20 patients)",
    "homepage": "https://github.com/muschellij2/open_ms_data",
    "commit": COMMIT,
    "base_url": f"https://raw.githubusercontent.com/muschellij2/open_ms_data/{COMMIT}/",
    "access": "download",
    "registration_required": False,
    "licence": "Creative Commons Attribution (CC-BY); see cross_sectional/LICENSE.txt and longitudinal/LICENSE.txt",
    "citation": [
        "Lesjak Z, Galimzianova A, Koren A, Lukin M, Pernus F, Likar B, Spiclin Z. A novel public MR image dataset "
        "of multiple sclerosis patients with lesion segmentations based on multi-rater consensus. "
        "Neuroinformatics 16, 51-63 (2018). doi:10.1007/s12021-017-9348-7 (cross-sectional data)",
        "Lesjak Z, Pernus F, Likar B, Spiclin Z. Validation of white-matter lesion change detection methods on a "
        "novel publicly available MRI image database. Neuroinformatics 14, 403-420 (2016) "
        "(longitudinal data)",
    ],
    "default_subsets": ["cross_sectional_mni"],
}


def main(tsv: str) -> Path:
    files = []
    with open(tsv, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            files.append(
                {
                    "path": row["path"],
                    "git_blob_sha1": row["git_blob_sha1"],
                    "sha256": row["sha256_if_in_this_folder"] or None,
                    "bytes": int(row["bytes"]) if row["bytes"] else None,
                }
            )
    files.sort(key=lambda f: f["path"])
    out = HERE / "open_ms_data.json"
    # One file per line keeps the committed manifest readable and its diffs small.
    lines = ",\n".join("    " + json.dumps(f, ensure_ascii=False) for f in files)
    head = json.dumps(HEADER, indent=2, ensure_ascii=False)[:-2]
    out.write_text(f'{head},\n  "files": [\n{lines}\n  ]\n}}\n', encoding="utf-8")
    json.loads(out.read_text(encoding="utf-8"))  # refuse to leave invalid JSON behind
    print(f"wrote {out} ({len(files)} files)")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python data_download/make_open_ms_manifest.py PATH/TO/MANIFEST.tsv")
    main(sys.argv[1])
