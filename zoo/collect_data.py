"""Build the zoo's training text from installed package sources and the shared text corpora.

Writes zoo/.build/train.txt and zoo/.build/val.txt (git-ignored; documents joined by the
separator token) and the committed manifest zoo/data_manifest.json (package versions and
licenses, the sorted file list with per-file sha256, and the digests of both texts).

    python3 zoo/collect_data.py [--config zoo/config.yaml]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as metadata
import json
from pathlib import Path

import yaml

ZOO = Path(__file__).resolve().parent
BUILD = ZOO / ".build"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def package_license(dist: metadata.Distribution) -> str:
    meta = dist.metadata
    # Newer wheels state an SPDX expression; older ones only a free-text field or classifiers.
    if meta.get("License-Expression"):
        return meta["License-Expression"]
    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    if classifiers:
        return "; ".join(classifiers)
    return (meta.get("License") or "unknown").splitlines()[0]


def package_sources(name: str, expected_version: str) -> tuple[dict, list[tuple[str, bytes]]]:
    """The distribution's installed .py files, sorted by path, with its metadata record."""
    dist = metadata.distribution(name)
    if dist.version != str(expected_version):
        raise SystemExit(f"{name}=={dist.version} installed, config expects {expected_version}: digest would differ")
    files = sorted((f for f in dist.files or [] if f.suffix == ".py"), key=lambda f: f.as_posix())
    docs = []
    for f in files:
        # RECORD lists files relative to site-packages, so the path is stable across machines.
        docs.append((f"{name}/{f.as_posix()}", Path(dist.locate_file(f)).read_bytes()))
    record = {"name": name, "version": dist.version, "license": package_license(dist), "files": len(docs),
              "bytes": sum(len(b) for _, b in docs)}
    return record, docs


def corpus_document(entry: dict) -> tuple[str, bytes]:
    data = Path(entry["path"]).read_bytes()
    if sha256(data) != entry["sha256"]:
        raise SystemExit(f"{entry['path']}: sha256 differs from the provenance record")
    return entry["name"], data


def split_documents(py_docs: list[tuple[str, bytes]], corpora: list[tuple[str, bytes]], val_every: int):
    """Hold out every val_every-th source file; the text corpora always train."""
    train = [d for i, d in enumerate(py_docs) if i % val_every != val_every - 1] + corpora
    val = [d for i, d in enumerate(py_docs) if i % val_every == val_every - 1]
    return train, val


def join_documents(docs: list[tuple[str, bytes]], separator: str) -> str:
    texts = []
    for path, raw in docs:
        text = raw.decode("utf-8")
        # A literal separator inside a document would silently split it during tokenization.
        if separator in text:
            raise SystemExit(f"{path} contains the separator {separator!r}")
        texts.append(text)
    return separator.join(texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ZOO / "config.yaml")
    args = parser.parse_args()
    cfg = yaml.safe_load(args.config.read_text())["data"]

    records, py_docs = [], []
    for name in cfg["packages"]:
        record, docs = package_sources(name, cfg["expect_versions"][name])
        records.append(record)
        py_docs.extend(docs)
    py_docs.sort(key=lambda d: d[0])
    corpora = [corpus_document(e) for e in cfg["corpora"]]
    train, val = split_documents(py_docs, corpora, cfg["val_every"])

    BUILD.mkdir(exist_ok=True)
    texts = {"train": join_documents(train, cfg["separator"]), "val": join_documents(val, cfg["separator"])}
    digests = {}
    for split, text in texts.items():
        raw = text.encode("utf-8")
        (BUILD / f"{split}.txt").write_bytes(raw)
        digests[split] = {"documents": len(train if split == "train" else val), "bytes": len(raw), "sha256": sha256(raw)}

    val_paths = {p for p, _ in val}
    manifest = {
        "description": "Training text of the pearzoo model zoo; built by zoo/collect_data.py.",
        "separator": cfg["separator"],
        "text": digests,
        "packages": records,
        "corpora": [{k: e[k] for k in ("name", "path", "sha256", "license")} for e in cfg["corpora"]],
        "files": [{"path": p, "bytes": len(b), "sha256": sha256(b), "split": "val" if p in val_paths else "train"}
                  for p, b in py_docs],
    }
    (ZOO / "data_manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(json.dumps({"text": digests, "packages": [f"{r['name']}=={r['version']}" for r in records]}, indent=1))


if __name__ == "__main__":
    main()
