from __future__ import annotations

from pathlib import Path

import pytest

from appliance.dataset import DatasetError, read_dataset_manifest


def test_rows_resolve_against_the_csv_and_excluded_rows_are_dropped(tmp_path: Path) -> None:
    csv = tmp_path / "sets" / "manifest.csv"
    csv.parent.mkdir()
    csv.write_text(
        "image,label,masks,split,site\n"
        "a.png,benign,a_mask.png;a_mask_1.png,train,x\n"
        "b.png,normal,,test,y\n"
        "c.png,malignant,c_mask.png,exclude,x\n"
    )
    cases = read_dataset_manifest(csv)
    assert [c.image.name for c in cases] == ["a.png", "b.png"]
    assert cases[0].masks == (csv.parent / "a_mask.png", csv.parent / "a_mask_1.png")
    assert cases[1].masks == () and cases[1].split == "test" and cases[1].line == 3


def test_missing_file_and_missing_columns(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        read_dataset_manifest(tmp_path / "none.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("image,label\n")
    with pytest.raises(DatasetError, match=r"columns \['masks', 'split'\] missing"):
        read_dataset_manifest(bad)


def test_the_site_column_is_read_and_filters_the_evaluated_cases(tmp_path: Path) -> None:
    from appliance.evaluate import read_cases

    csv = tmp_path / "manifest.csv"
    csv.write_text(
        "image,label,masks,split,site\n"
        "a.png,benign,,test,logiq7\n"
        "b.png,malignant,,test,aplio300\n"
        "c.png,benign,,train,aplio300\n"
    )
    assert [c.site for c in read_dataset_manifest(csv)] == ["logiq7", "aplio300", "aplio300"]
    assert [c.image.name for c in read_cases(csv, "test", "aplio300")] == ["b.png"]
    with pytest.raises(DatasetError, match=r"no rows of site 'usystems'.*\['aplio300', 'logiq7'\]"):
        read_cases(csv, "test", "usystems")
    plain = tmp_path / "plain.csv"
    plain.write_text("image,label,masks,split\na.png,benign,,test\n")
    assert read_dataset_manifest(plain)[0].site is None
    with pytest.raises(DatasetError, match="no site column"):
        read_cases(plain, "test", "logiq7")
