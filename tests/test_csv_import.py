"""The CSV importer: every bad input is one line naming file, line and column; nothing is written
unless everything validates."""

import errno
import importlib.util
import os
import re
import tempfile
from pathlib import Path

import pytest

from sidrec_core.data.csv_import import import_csv
from sidrec_core.data.dataset import DataConfig, DataError, load_dataset_dir

GOOD = "user,item,timestamp\nu1,B,20\nu1,A,10\nu2,C,5\n"
ITEMS = "item,title,price\nA,Alpha,1.5\nB,Beta,\nC,Gamma,3\n"


def _cli():
    path = Path(__file__).resolve().parents[1] / "bench" / "import_csv.py"
    spec = importlib.util.spec_from_file_location("import_csv_cli", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _error(tmp_path, interactions: str | None, items: str | None = None) -> str:
    i_path = tmp_path / "i.csv"
    if interactions is not None:
        i_path.write_text(interactions)
    items_path = None
    if items is not None:
        items_path = tmp_path / "items.csv"
        items_path.write_text(items)
    with pytest.raises(DataError) as exc:
        import_csv(i_path, tmp_path / "ds", items_path)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(
    ("csv_text", "expected"),
    [
        ("user,item,timestamp\nu1,A,1\nu 1,B,2\n", r"i.csv:3: column 'user': id 'u 1' contains"),
        ("user,item,timestamp\nu1,A\tB,1\n", r"i.csv:2: column 'item': id 'A\\tB' contains"),
        ("user,item,timestamp\nu1,A,1\nu1,B,2,9\n", r"i.csv:3: expected 3 fields .* got 4"),
        ("", r"i.csv:1: empty file"),
        ("user,item,timestamp\n", r"i.csv:2: no data rows"),
        ("user,item\nu1,A\n", r"i.csv:1: missing column\(s\) \['timestamp'\]"),
        ("user,item,timestamp\nu1,A,1\nu1,B,2\nu2,C,x7\n", r"i.csv:4: column 'timestamp'.*'x7'"),
        (
            "user,item,timestamp\nu1,A,2014-01-02\nu1,B,2014-13-45\n",
            r"i.csv:3: column 'timestamp'.*'2014-13-45'",
        ),
        ("user,item,timestamp\nu1,A,1\n,B,2\n", r"i.csv:3: column 'user': empty id"),
    ],
)
def test_bad_interactions_name_file_line_and_column(tmp_path, csv_text, expected):
    assert re.search(expected, _error(tmp_path, csv_text))
    assert not (tmp_path / "ds").exists()


def test_missing_file(tmp_path):
    assert _error(tmp_path, None).endswith("i.csv: file not found")


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ("item,title\nA,x\nA,y\n", "items.csv:3: column 'item': 'A' already listed on line 2"),
        ("item,title,price\nA,x,cheap\n", "items.csv:2: column 'price': expected a number"),
        ("title\nx\n", "items.csv:1: needs an 'item' (or 'asin') column"),
        ("item,title\nA,x,y\n", "items.csv:2: expected 2 fields"),
    ],
)
def test_bad_items_csv_writes_nothing(tmp_path, items, expected):
    assert expected in _error(tmp_path, GOOD, items)
    assert not (tmp_path / "ds").exists()
    assert {p.name for p in tmp_path.iterdir()} == {"i.csv", "items.csv"}


def test_failed_reimport_keeps_previous_dataset(tmp_path):
    (tmp_path / "i.csv").write_text(GOOD)
    import_csv(tmp_path / "i.csv", tmp_path / "ds")
    before = (tmp_path / "ds" / "sequences.txt").read_text()
    _error(tmp_path, GOOD + "u3,D,oops\n")
    assert (tmp_path / "ds" / "sequences.txt").read_text() == before
    assert {p.name for p in tmp_path.iterdir()} == {"i.csv", "ds"}


def test_reimport_replaces_dataset_and_loads(tmp_path):
    (tmp_path / "i.csv").write_text(GOOD)
    (tmp_path / "items.csv").write_text(ITEMS)
    import_csv(tmp_path / "i.csv", tmp_path / "ds")
    (tmp_path / "i.csv").write_text(GOOD + "u2,A,6\nu2,B,7\n")
    counts = import_csv(tmp_path / "i.csv", tmp_path / "ds", tmp_path / "items.csv")
    assert counts == {
        "num_users": 2,
        "num_interactions": 5,
        "duplicate_rows_dropped": 0,
        "num_items_with_meta": 3,
    }
    assert (tmp_path / "ds" / "sequences.txt").read_text() == "u1 A B\nu2 C A B\n"
    ds = load_dataset_dir(tmp_path / "ds", DataConfig())  # u1 has too few items
    assert ds.user_ids == ["u2"] and ds.item_meta[1]["title"] == "Gamma"
    assert (tmp_path / "ds").stat().st_mode & 0o777 == 0o755
    assert {p.name for p in tmp_path.iterdir()} == {"i.csv", "items.csv", "ds"}


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    (tmp_path / "i.csv").write_text("user,item,timestamp\nu 1,A,1\n")
    assert _cli()([str(tmp_path / "i.csv"), str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: ") and "i.csv:2: column 'user'" in err


def test_utf8_bom_csv_is_read(tmp_path):
    # Excel's "CSV UTF-8" opens the file with a byte-order mark before the header
    (tmp_path / "i.csv").write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    (tmp_path / "items.csv").write_bytes(b"\xef\xbb\xbf" + ITEMS.encode())
    counts = import_csv(tmp_path / "i.csv", tmp_path / "ds", tmp_path / "items.csv")
    assert counts["num_users"] == 2 and counts["num_items_with_meta"] == 3
    assert (tmp_path / "ds" / "sequences.txt").read_text() == "u1 A B\nu2 C\n"


def test_duplicate_rows_dropped_and_counted(tmp_path, caplog):
    # policy: a row repeating user, item and timestamp is one interaction exported twice
    # (dropped, counted, first repeat named); the same item at another time is kept
    (tmp_path / "i.csv").write_text(GOOD + "u1,B,20\nu1,B,20\nu1,A,30\n")
    counts = import_csv(tmp_path / "i.csv", tmp_path / "ds")
    assert counts["duplicate_rows_dropped"] == 2 and counts["num_interactions"] == 4
    assert (tmp_path / "ds" / "sequences.txt").read_text() == "u1 A B A\nu2 C\n"
    assert "dropped 2 duplicate row(s)" in caplog.text and "line 5 repeats line 2" in caplog.text


def test_items_csv_missing_an_item_fails_at_import(tmp_path):
    msg = _error(tmp_path, GOOD, "item,title\nA,x\nB,y\n")
    assert "i.csv:4: column 'item': 'C' has no row in" in msg and "items.csv" in msg
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("errno_code", [errno.EROFS, errno.ENOSPC])
def test_unwritable_output_folder_is_one_line(tmp_path, capsys, monkeypatch, errno_code):
    # root ignores chmod, so the read-only / full folder is simulated where the folder is made
    (tmp_path / "i.csv").write_text(GOOD)

    def refuse(*args, **kwargs):
        raise OSError(errno_code, os.strerror(errno_code))

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    assert _cli()([str(tmp_path / "i.csv"), str(tmp_path / "out" / "ds")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {tmp_path / 'out'}: {os.strerror(errno_code)}")
