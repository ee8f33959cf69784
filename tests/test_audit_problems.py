"""Every audit problem names its file and what to do; a corpus of odd files goes through audit and run."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dicomgen import bundled, write_dicom
from PIL import Image
from synthetic import make_busi_replica, texture

from medsg import cli
from medsg.data import load_manifest
from medsg.data.audit import apply_audit_policy, audit_manifest, summarize


def test_missing_orphan_and_unreadable_masks_are_named(tmp_path: Path) -> None:
    root = make_busi_replica(tmp_path, n_per_class=4)
    base = root / "Dataset_BUSI_with_GT"
    Image.new("1", (40, 32)).save(base / "benign" / "benign (99)_mask.png")  # a mask without its image
    (base / "malignant" / "malignant (2)_mask.png").write_text("not a mask\n")  # unreadable
    manifest = load_manifest("busi", root)
    report = audit_manifest(manifest)
    by_kind = {(p["role"], p["kind"]): p for p in report.problems}
    orphan = by_kind[("mask", "orphan_mask")]
    assert orphan["path"].endswith("benign (99)_mask.png") and "add the image" in orphan["action"]
    unreadable = by_kind[("mask", "not_image")]
    assert unreadable["path"].endswith("malignant (2)_mask.png") and unreadable["severity"] == "error"
    assert "re-export the mask" in unreadable["action"]
    missing = by_kind[("mask", "missing_mask")]
    assert missing["path"].endswith("malignant (7).png") and "add its mask file" in missing["action"]
    text = summarize(report)
    for problem in report.problems:  # each one named, with what to do, in the console summary
        assert problem["path"] in text and problem["action"] in text
    clean = apply_audit_policy(manifest, report).set_index("id")
    assert (
        "malignant (2)" in clean.index
        and "malignant (2)_mask" not in clean.loc["malignant (2)", "mask_paths"]
    )


def _odd_corpus(root: Path) -> dict[str, str | None]:
    """Two classes of unusual files; file name -> the error kind the audit must report (None: loads)."""
    rng = np.random.default_rng(0)
    expect: dict[str, str | None] = {}

    def put(cls: str, name: str, kind: str | None) -> Path:
        (root / cls).mkdir(parents=True, exist_ok=True)
        expect[f"{cls}/{name}"] = kind
        return root / cls / name

    for cls in ("a", "b"):
        for i in range(4):  # plain, distinct images so each class can be split
            Image.fromarray(texture(rng, (40, 32))).save(put(cls, f"plain{i}.png", None))
    for cls, name in (("a", "deep16.png"), ("b", "deep16.tif")):
        deep = (texture(rng, (40, 32), channels=1).astype(np.uint16) * 200).astype(np.uint16)
        Image.fromarray(deep).save(put(cls, name, None))
    Image.fromarray(texture(rng, (40, 32))).convert("CMYK").save(put("a", "cmyk.jpg", None))
    Image.fromarray(texture(rng, (40, 32))).save(put("b", "jpeg_named.png", None), format="JPEG")
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(texture(rng, (40, 32))).save(put("a", "rotated.jpg", None), exif=exif)
    Image.fromarray(texture(rng, (40, 32))).convert("P").save(put("b", "palette.png", None))
    Image.fromarray(texture(rng, (40, 32))).convert("LA").save(put("a", "grey_alpha.png", None))
    Image.new("L", (1, 1)).save(put("b", "dot.png", "degenerate"))
    put("a", "empty.png", "zero_byte").write_bytes(b"")
    put("b", "notes.png", "not_image").write_text("not an image\n")
    good = (root / "a" / "plain0.png").read_bytes()
    put("a", "cut.png", "truncated").write_bytes(good[: len(good) // 2])
    twelve = texture(rng, (40, 32), channels=1).astype(np.uint16) * 16
    write_dicom(put("a", "mono1.dcm", None), twelve, bits_stored=12, photometric="MONOCHROME1")
    loop = np.stack([texture(rng, (40, 32)) for _ in range(3)])
    write_dicom(put("b", "cine.dcm", None), loop, frames=True)
    twelve = texture(rng, (40, 32), channels=1).astype(np.uint16) * 16
    write_dicom(put("b", "IM0001", None), twelve, bits_stored=12, WindowCenter="2000", WindowWidth="3000")
    for cls, name, kind in (("a", "rtplan.dcm", "no_pixel_data"), ("b", "JPGExtended.dcm", None)):
        if bundled(name):
            shutil.copyfile(bundled(name), put(cls, name, kind or "unsupported_transfer_syntax"))
    return expect


@pytest.mark.e2e
def test_odd_corpus_through_audit_and_run(
    tmp_path: Path, capsys: pytest.CaptureFixture, write_config
) -> None:
    root = tmp_path / "data"
    expect = _odd_corpus(root)
    out = tmp_path / "audit.json"
    assert cli.main(["audit", "--adapter", "imagefolder", "--root", str(root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    errors = {p["id"]: p["kind"] for p in report["problems"] if p["severity"] == "error"}
    assert errors == {name: kind for name, kind in expect.items() if kind}
    warnings = {(p["id"], p["kind"]) for p in report["problems"] if p["severity"] == "warning"}
    assert {("b/jpeg_named.png", "format_mismatch"), ("b/cine.dcm", "multi_frame")} <= warnings
    for problem in report["problems"]:
        assert problem["path"] in printed and problem["action"] in printed, problem

    odd = {
        "experiment.name": "odd",
        "experiment.report_dir": tmp_path / "rep",
        "data.adapter": "imagefolder",
        "eval.bootstrap": 10,
        "explain.cases_per_fold": 1,  # review cases read the odd originals too
    }
    config = write_config(root, tmp_path, odd, path=tmp_path / "c.yaml")
    assert cli.main(["-q", "run", str(config)]) == 0
    predicted = set(pd.read_csv(tmp_path / "runs" / "odd" / "oof_predictions.csv")["id"])
    assert predicted == {name for name, kind in expect.items() if kind is None}  # every usable file, no other

    # the disk fills up while the report is rewritten: one clear line, and the previous report survives
    report = tmp_path / "rep" / "report.md"
    before = report.read_bytes()
    capsys.readouterr()

    def full_disk(fd: int, mode: str):
        os.close(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "fdopen", full_disk)
        assert cli.main(["report", str(tmp_path / "runs" / "odd"), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "disk is full" in err[0] and "re-run" in err[0]
    assert report.read_bytes() == before
