"""CSV listings and ground-truth files as users write them: every error names its line."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic import make_isic_replica

from medsg.core.errors import DataError
from medsg.data import load_manifest


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "lists" / "imgs"
    folder.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(folder / f"{i}.png")
    return folder


def _csv(tmp_path: Path, text: str, name: str = "list.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / "lists" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


def test_duplicate_ids_name_their_lines(tmp_path: Path, images: Path) -> None:
    csv = _csv(tmp_path, "path,label,id\nimgs/0.png,a,x\n\nimgs/1.png,b,y\nimgs/2.png,a,x\n")
    with pytest.raises(DataError, match=r"line 5 repeats 'x' of line 2"):
        load_manifest("csv", csv)
    csv = _csv(tmp_path, "path,label\nimgs/0.png,a\nimgs/1.png,b\nimgs/0.png,b\n")  # path is the id
    with pytest.raises(DataError, match=r"line 4 repeats 'imgs/0.png' of line 2"):
        load_manifest("csv", csv)


def test_malformed_rows_name_their_lines(tmp_path: Path, images: Path) -> None:
    csv = _csv(tmp_path, "path,label\nimgs/0.png,a\nimgs/1.png,b,extra\n")
    with pytest.raises(DataError, match="line 3 has 3 fields but the header has 2"):
        load_manifest("csv", csv)
    csv = _csv(tmp_path, "path,label\n\nimgs/0.png,a\nimgs/1.png,\n")
    with pytest.raises(DataError, match=r"line\(s\) \[4\]"):
        load_manifest("csv", csv)
    csv = _csv(tmp_path, "path,label\nimgs/0.png,caf\xe9\n", encoding="latin-1")
    with pytest.raises(DataError, match="not UTF-8"):
        load_manifest("csv", csv)
    csv = _csv(tmp_path, "path,label\n")
    with pytest.raises(DataError, match="no rows"):
        load_manifest("csv", csv)


def test_excel_exports_load(tmp_path: Path, images: Path) -> None:
    text = "\ufeffpath;label;patient_id\r\nimgs/0.png;a;P1\r\nimgs/1.png;b;P2\r\n"  # BOM, semicolons, CRLF
    manifest = load_manifest("csv", _csv(tmp_path, text))
    assert manifest["label_name"].tolist() == ["a", "b"] and manifest["patient_id"].tolist() == ["P1", "P2"]
    tabs = load_manifest("csv", _csv(tmp_path, "path\tlabel\nimgs/0.png\ta\n", name="t.tsv"))
    assert tabs["path"].tolist() == [str(images / "0.png")]


def test_paths_climbing_out_of_the_csv_folder_are_named(
    tmp_path: Path, images: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outside = tmp_path / "elsewhere.png"
    Image.new("L", (16, 16)).save(outside)
    text = f"path,label\nimgs/0.png,a\n../elsewhere.png,b\n{images / '1.png'},a\n"  # relative, climbing, absolute
    with caplog.at_level(logging.WARNING):
        manifest = load_manifest("csv", _csv(tmp_path, text))
    assert manifest["path"].tolist() == [str(images / "0.png"), str(outside), str(images / "1.png")]
    warnings = [r.getMessage() for r in caplog.records if "climb" in r.getMessage()]
    assert len(warnings) == 1 and "line 3: '../elsewhere.png'" in warnings[0]
    assert str(images / "1.png") not in warnings[0]  # absolute paths are allowed, as before


def test_isic_ground_truth_not_one_hot_names_the_line(tmp_path: Path) -> None:
    root = make_isic_replica(tmp_path, n_lesions_per_class=1)
    csv = root / "ISIC2018_Task3_Training_GroundTruth.csv"
    lines = csv.read_text().splitlines()
    lines.insert(2, "")  # a blank line does not shift the numbers
    image = lines[4].split(",")[0]
    lines[4] = image + ",0.0,0.0,0.0,0.0,0.0,0.0,0.0"  # all zeros
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"line 5 \({image}\)"):
        load_manifest("isic2018", root)
    lines[4] = lines[3]  # the same image twice
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"line 5 repeats .* of line 4"):
        load_manifest("isic2018", root)
