from pathlib import Path

from bus_mtl.cli.check_data import main


def test_check_data_ok_and_failing(busi_tree: Path, tmp_path: Path, capsys) -> None:
    cache = str(tmp_path / "c")
    assert (
        main(
            [
                "--busi",
                str(busi_tree),
                "--normal",
                "class",
                "--cache-dir",
                cache,
                "--image-size",
                "64",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "9 images" in out and "normal" in out and "OK" in out
    (busi_tree / "Dataset_BUSI_with_GT" / "malignant" / "malignant (2)_mask.png").unlink()
    (busi_tree / "Dataset_BUSI_with_GT" / "benign" / "benign (3).png").write_bytes(b"junk")
    assert main(["--busi", str(busi_tree), "--cache-dir", cache, "--image-size", "64"]) == 1
    out = capsys.readouterr().out
    assert "malignant (2).png: missing mask" in out and "benign (3).png: unreadable" in out


def test_check_data_synthetic_writes_split(tmp_path: Path, capsys) -> None:
    split = tmp_path / "split.json"
    rc = main(
        [
            "--synthetic",
            "20",
            "--image-size",
            "64",
            "--cache-dir",
            str(tmp_path / "c"),
            "--split-out",
            str(split),
        ]
    )
    assert rc == 0 and split.is_file()
    assert "20 images" in capsys.readouterr().out
