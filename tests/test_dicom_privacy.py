"""A CSV of DICOM files grouped by patient: patient-level folds, a persisted salt, no header data in any output.

Every identifying header field of the files holds a marker string (some in invalid forms that make pydicom
want to warn). After ``medsg audit``, ``medsg splits`` and a short ``medsg run``, the marker must be in no file
the commands wrote and in nothing they logged or printed. File names are the user's own and stay visible.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dicomgen import dicom_dataset
from synthetic import texture

from medsg import cli
from medsg.core.errors import DataError
from medsg.data.dicom import salted_hash

MARKER = "ZQXMARKER"
N_PATIENTS, PER_PATIENT = 6, 3


def _write_patient_files(root: Path) -> Path:
    """``PER_PATIENT`` images for each of ``N_PATIENTS`` patients (half of them 'lesion'), and their CSV."""
    rng = np.random.default_rng(0)
    lines = ["path,label"]
    for p in range(N_PATIENTS):
        label = "lesion" if p % 2 else "normal"
        for i in range(PER_PATIENT):
            grey = texture(rng, (48, 40), channels=1).astype(np.uint16) * 16  # 12-bit data
            ds = dicom_dataset(
                grey,
                bits_stored=12,
                photometric="MONOCHROME1" if i == 2 else "MONOCHROME2",
                PatientName=f"{MARKER}^Patient{p}",
                PatientID=f"{MARKER}-{p}",
                PatientBirthDate=f"{MARKER}",  # not a valid DA: pydicom's validation would quote it
                PatientAddress=f"{MARKER} street {p}",
                OtherPatientIDs=f"{MARKER}-other-{p}",
                InstitutionName=f"{MARKER} hospital",
                ReferringPhysicianName=f"{MARKER}^Doctor",
                StudyDescription=f"{MARKER} study",
                AccessionNumber=f"{MARKER}{p}{i}",
                StudyInstanceUID=f"1.2.3.{p}",
            )
            block = ds.private_block(0x0009, "ACME 1.0", create=True)
            block.add_new(0x01, "LO", f"{MARKER} private")
            name = f"p{p}_img{i}.dcm"
            ds.save_as(root / name, enforce_file_format=True)
            lines.append(f"{name},{label}")
    csv = root / "listing.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


PATIENTS = {  # patient-level folds from the DICOM headers; sgformer_tiny for significance, CAMs, review page
    "experiment.name": "dicom_patients",
    "data.adapter": "csv",
    "splits.grouping": "dicom:PatientID",
    "eval.bootstrap": 10,
    "explain.cases_per_fold": 1,
}


@pytest.mark.e2e
def test_patient_grouping_and_no_header_data_in_any_output(
    tmp_path: Path, capfd: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture, write_config
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    csv = _write_patient_files(data)
    out = tmp_path / "out"
    config = write_config(
        csv, out, PATIENTS, {"splits.file": out / "splits" / "patients.json"}, model="sgformer_tiny"
    )
    caplog.clear()  # (writing the marker into the test files made pydicom warn; that was the test, not medsg)
    capfd.readouterr()
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        assert (
            cli.main(["audit", "--adapter", "csv", "--root", str(csv), "--out", str(out / "audit.json")]) == 0
        )
        assert cli.main(["splits", str(config)]) == 0
        assert cli.main(["-q", "run", str(config)]) == 0
    printed = capfd.readouterr()

    # patient-level folds: every image of a patient is in one test fold
    split = json.loads((out / "splits" / "patients.json").read_text())
    salt = split["header"]["group_salt"]
    assert len(salt) == 32 and split["header"]["grouping"] == "dicom:PatientID"
    fold_of = {i: f for f, fold in enumerate(split["folds"]) for i in fold["val"]}
    for p in range(N_PATIENTS):
        assert len({fold_of[f"p{p}_img{i}.dcm"] for i in range(PER_PATIENT)}) == 1
    # the manifest holds the salted hash of each patient id, under the grouping's name
    run_dir = out / "runs" / "dicom_patients"
    manifest = pd.read_csv(run_dir / "manifest.csv", dtype=str, keep_default_na=False).set_index("id")
    for p in range(N_PATIENTS):
        assert manifest.loc[f"p{p}_img0.dcm", "dicom:PatientID"] == salted_hash(f"{MARKER}-{p}", salt)
    assert (run_dir / "DONE").exists() or (run_dir / "summary.json").exists()

    # no header value anywhere: files written, logs, warnings, stdout, stderr
    written = [p for p in out.rglob("*") if p.is_file()]
    assert len(written) > 10
    names = {p.name for p in written}
    assert {"review.html", "cases.json", "localization.csv"} <= names  # explanations are scanned too
    assert any(p.suffix == ".png" and "panels" in p.parts for p in written)
    leaks = [str(p) for p in written if MARKER.encode() in p.read_bytes()]
    assert leaks == []
    assert MARKER not in printed.out and MARKER not in printed.err
    assert MARKER not in caplog.text
    assert not [w for w in caught if MARKER in str(w.message)]
    # file names are the user's own ids and stay visible
    assert "p0_img0.dcm" in (run_dir / "manifest.csv").read_text()


def test_a_rerun_finds_the_same_salt_and_groups(tmp_path: Path, write_config) -> None:
    from medsg.config import load_config
    from medsg.workflows.prepare import prepare_data

    data = tmp_path / "data"
    data.mkdir()
    out = tmp_path / "out"
    patients = {"splits.file": out / "splits" / "patients.json"}
    cfg = load_config(
        write_config(_write_patient_files(data), out, PATIENTS, patients, model="sgformer_tiny")
    )
    first = prepare_data(cfg, new_split_expected=True)
    again = prepare_data(cfg)  # reads the salt back from the split file's header
    assert first.manifest["dicom:PatientID"].tolist() == again.manifest["dicom:PatientID"].tolist()
    assert first.splits == again.splits
    assert first.manifest["dicom:PatientID"].nunique() == N_PATIENTS
    # a split file without the salt (made for another grouping) is named, not silently re-grouped
    header = json.loads(Path(cfg.split_file).read_text())["header"]
    header.pop("group_salt")
    Path(cfg.split_file).write_text(json.dumps({"header": header, "folds": first.splits}))
    with pytest.raises(DataError, match="group_salt"):
        prepare_data(cfg)
