"""Loaders (synthetic, real Beauty, shipped Sports), leave-one-out split, item text, bad input,
atomic writes."""

import gzip
import json

import numpy as np
import pytest

from sidrec_core.data import dataset as dataset_mod
from sidrec_core.data.csv_import import import_csv
from sidrec_core.data.dataset import (
    DataConfig,
    DataError,
    load_dataset,
    load_dataset_dir,
    load_prepared,
    resolve_dataset_dir,
    save_prepared,
)
from sidrec_core.data.embeddings import check_embeddings, load_precomputed, load_shipped
from sidrec_core.data.split import leave_one_out, pad_left
from sidrec_core.data.synthetic import planted_successor
from sidrec_core.data.text import item_text
from sidrec_core.io import atomic_path, write_json


def _write(dirpath, seqs: str, items: list[dict] | str | None = None):
    dirpath.mkdir(parents=True, exist_ok=True)
    (dirpath / "sequences.txt").write_text(seqs)
    if items is not None:
        text = items if isinstance(items, str) else "\n".join(json.dumps(i) for i in items) + "\n"
        (dirpath / "items.jsonl").write_text(text)
    return dirpath


ITEMS = [{"asin": a, "title": f"T {a}"} for a in "ABCDEF"]


def test_load_remaps_ids_in_first_appearance_order(tmp_path):
    d = _write(tmp_path / "ds", "u1 C A B D\nu2 A E F B\n", ITEMS)
    ds = load_dataset_dir(d, DataConfig())
    assert ds.item_keys == ["<pad>", "C", "A", "B", "D", "E", "F"]
    np.testing.assert_array_equal(ds.sequences[1], [2, 5, 6, 3])
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (2, 6, 8)
    assert ds.item_meta[1]["title"] == "T C"


def test_short_sequences_dropped_and_counted(tmp_path, caplog):
    d = _write(tmp_path / "ds", "u1 A B\nu2 A B C\n")
    ds = load_dataset_dir(d, DataConfig())
    assert ds.num_users == 1 and ds.dropped["short_sequences"] == 1
    assert "dropped 1 users" in caplog.text


@pytest.mark.parametrize(
    "seqs, items, needle",
    [
        ("u1 A B C\n\nu2 A B C\n", None, "sequences.txt:2: empty line"),
        ("u1 A B C\nu2\n", None, "sequences.txt:2: malformed line"),
        ("u1 A B C\nu1 A B D\n", None, "sequences.txt:2: user 'u1' listed twice (first on line 1)"),
        ("u1 A B Z\n", ITEMS, "missing from items.jsonl, e.g. ['Z']"),
        ("u1 A B C\n", '{"asin": "A"}\n{"asin": "B",\n', "items.jsonl:2: invalid JSON"),
        ("u1 A B C\n", '{"asin": "A"}\n{"title": "x"}\n', "items.jsonl:2: key 'asin' missing"),
        (
            "u1 A B C\n",
            '{"asin": "A"}\n{"asin": "A"}\n',
            "items.jsonl:2: asin 'A' already listed on line 1",
        ),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, seqs, items, needle):
    d = _write(tmp_path / "ds", seqs, items)
    with pytest.raises(DataError) as err:
        load_dataset_dir(d, DataConfig())
    assert needle in str(err.value)


def test_truncated_gzip_without_checksums_names_the_file(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    body = "".join(f"u{i} A B C D\n" for i in range(5000)).encode()
    packed = gzip.compress(body)
    (d / "sequences.txt.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError) as err:
        load_dataset_dir(d, DataConfig())
    assert "sequences.txt.gz:" in str(err.value) and "corrupt or truncated gzip" in str(err.value)


def test_non_utf8_sequences_name_file_and_line(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    (d / "sequences.txt").write_bytes(b"u1 A B C\nu2 caf\xe9 B C\n")
    with pytest.raises(DataError, match=r"sequences.txt:2: not UTF-8 text .*column 7: byte 0xe9"):
        load_dataset_dir(d, DataConfig())


def test_plain_and_gzip_copies_must_agree(tmp_path):
    d = _write(tmp_path / "ds", "u1 A B C\nu2 A B C\n")
    (d / "sequences.txt.gz").write_bytes(gzip.compress(b"u1 A B C\nu2 A B D\n"))
    with pytest.raises(DataError, match="both sequences.txt and sequences.txt.gz .* differ"):
        load_dataset_dir(d, DataConfig())
    (d / "sequences.txt.gz").write_bytes(gzip.compress((d / "sequences.txt").read_bytes()))
    assert load_dataset_dir(d, DataConfig()).num_users == 2


def test_every_user_too_short_is_one_clear_error(tmp_path):
    d = _write(tmp_path / "ds", "u1 A B\nu2 A C\n")
    with pytest.raises(DataError, match="all 2 users have fewer than 3 items"):
        load_dataset_dir(d, DataConfig())


def test_trailing_blank_lines_and_gzip_are_fine(tmp_path):
    d = tmp_path / "gz"
    d.mkdir()
    with gzip.open(d / "sequences.txt.gz", "wt") as f:
        f.write("u1 A B C\nu2 B C D\n\n")
    assert load_dataset_dir(d, DataConfig()).num_users == 2


def test_unknown_dataset_lists_where_it_looked(monkeypatch, tmp_path):
    monkeypatch.setenv("SIDREC_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError) as err:
        resolve_dataset_dir("nope")
    msg = str(err.value)
    assert (
        "dataset 'nope' not found" in msg
        and str(tmp_path / "nope") in msg
        and "data/raw/nope" in msg
    )


def test_data_dir_env_takes_precedence(monkeypatch, tmp_path):
    _write(tmp_path / "beauty", "u1 A B C\n")
    monkeypatch.setenv("SIDREC_DATA_DIR", str(tmp_path))
    assert load_dataset(DataConfig(name="beauty")).num_users == 1


def test_leave_one_out_split(tmp_path):
    d = _write(tmp_path / "ds", "u1 A B C D E\nu2 C D E\n")
    loo = leave_one_out(load_dataset_dir(d, DataConfig()))
    test, valid = loo.split("test", 3), loo.split("valid", 3)
    np.testing.assert_array_equal(test.targets, [5, 5])
    np.testing.assert_array_equal(test.histories, [[2, 3, 4], [0, 3, 4]])
    np.testing.assert_array_equal(valid.targets, [4, 4])
    np.testing.assert_array_equal(valid.histories, [[1, 2, 3], [0, 0, 3]])
    np.testing.assert_array_equal(loo.train_sequences[0], [1, 2, 3])
    counts = loo.train_item_counts()
    assert (
        counts[0] == 0 and counts[3] == 2 and counts[5] == 0
    )  # test/valid targets are not counted


def test_pad_left_history_50():
    out = pad_left([np.arange(1, 80), np.array([7])], 50)
    assert out.shape == (2, 50) and out[0, -1] == 79 and out[0, 0] == 30 and out[1, -1] == 7
    assert (out[1, :-1] == 0).all()


def test_synthetic_is_seeded_labelled_and_planted(syn_cfg):
    a, b = load_dataset(syn_cfg, seed=0), load_dataset(syn_cfg, seed=0)
    assert a.synthetic and a.name == "synthetic"
    assert all(np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences, strict=True))
    c = load_dataset(syn_cfg, seed=1)
    assert not all(np.array_equal(x, y) for x, y in zip(a.sequences, c.sequences, strict=True))
    # the planted successor explains most transitions
    succ = planted_successor(syn_cfg.synthetic_items, syn_cfg.synthetic_clusters, 0)
    key_of = {i: int(k[3:]) for i, k in enumerate(a.item_keys) if i}
    pairs = [
        (key_of[x], key_of[y]) for s in a.sequences for x, y in zip(s[:-1], s[1:], strict=True)
    ]
    assert np.mean([succ[x] == y for x, y in pairs]) > 0.7


def test_prepared_roundtrip(tmp_path, syn_ds):
    save_prepared(syn_ds, tmp_path / "p")
    back = load_prepared(tmp_path / "p")
    assert back.counts() == syn_ds.counts() and back.item_keys == syn_ds.item_keys
    assert np.array_equal(back.sequences[3], syn_ds.sequences[3])


def test_item_text_template():
    meta = {
        "title": "Freeman Charcoal &amp; Black Sugar",
        "brand": "Freeman",
        "categories": [["Beauty", "Skin Care"], ["Beauty", "Masks"]],
        "price": 7.5,
    }
    assert item_text(meta) == (
        "Title: Freeman Charcoal & Black Sugar. Brand: Freeman. "
        "Categories: Beauty > Skin Care; Beauty > Masks. Price: $7.50."
    )
    assert (
        item_text({"title": None, "brand": "Unknown", "categories": None, "price": None})
        == "Unknown item."
    )


def test_precomputed_embeddings_checked(tmp_path):
    good = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    np.save(tmp_path / "g.npy", good)
    out = load_precomputed(tmp_path / "g.npy", 4)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(DataError, match=r"expected shape \[5, D\]"):
        load_precomputed(tmp_path / "g.npy", 5)
    good[2, 1] = np.nan
    with pytest.raises(DataError, match="NaN/inf .*row 2 = item id 3"):
        check_embeddings(good, 4, "x.npy")
    with pytest.raises(DataError, match="does not exist"):
        load_precomputed(tmp_path / "missing.npy", 4)


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"a": 2, "trunc')
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_csv_import(tmp_path):
    (tmp_path / "i.csv").write_text(
        "user,item,timestamp\nu1,B,20\nu1,A,10\nu2,C,5\nu1,C,30\nu2,A,6\nu2,B,7\n"
    )
    (tmp_path / "items.csv").write_text(
        "item,title,price,categories\nA,Alpha,1.5,Beauty|Nails\nB,Beta,,\nC,Gamma,3,\n"
    )
    counts = import_csv(tmp_path / "i.csv", tmp_path / "ds", tmp_path / "items.csv")
    assert counts["num_users"] == 2 and counts["num_interactions"] == 6
    ds = load_dataset_dir(tmp_path / "ds", DataConfig())
    assert [ds.item_keys[i] for i in ds.sequences[0]] == ["A", "B", "C"]
    assert (
        ds.item_meta[1]["categories"] == [["Beauty", "Nails"]] and ds.item_meta[2]["price"] is None
    )
    (tmp_path / "bad.csv").write_text("user,item\nu1,A\n")
    with pytest.raises(DataError, match="missing column"):
        import_csv(tmp_path / "bad.csv", tmp_path / "ds2")


@pytest.mark.slow
def test_real_beauty_counts(monkeypatch, tmp_path):
    # a user's machine: no team data folder beside the clone, no SIDREC_DATA_DIR
    monkeypatch.setattr(dataset_mod, "SHARED_DATASETS", tmp_path / "absent")
    monkeypatch.delenv("SIDREC_DATA_DIR", raising=False)
    assert resolve_dataset_dir("beauty") in (
        dataset_mod.SHIPPED_DATASETS / "beauty",
        dataset_mod.PROJECT_ROOT / "data" / "raw" / "beauty",
    )
    ds = load_dataset(DataConfig(name="beauty"))
    assert ds.data_sha256() is not None and len(ds.sources) == 2
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (22363, 12101, 198502)
    assert ds.dropped["short_sequences"] == 0
    assert sum(1 for m in ds.item_meta[1:] if m.get("title")) == 12094
    loo = leave_one_out(ds)
    assert loo.split("test", 20).histories.shape == (22363, 20)


@pytest.mark.parametrize("name", ["beauty", "sports"])
def test_shipped_dataset_matches_its_checksums(name):
    shipped = dataset_mod.SHIPPED_DATASETS / name
    sums = dataset_mod.read_checksums(shipped)
    assert set(sums) == {
        "sequences.txt.gz",
        "items.jsonl.gz",
        "embeddings.all-MiniLM-L6-v2.npy",
        "embeddings.all-MiniLM-L6-v2.json",
    }
    for name, expected in sums.items():
        assert dataset_mod.file_sha256(shipped / name) == expected


def test_shipped_sports_loads_with_published_counts_and_its_embedding_table(monkeypatch, tmp_path):
    # a user's machine: no team data folder beside the clone, no SIDREC_DATA_DIR
    monkeypatch.setattr(dataset_mod, "SHARED_DATASETS", tmp_path / "absent")
    monkeypatch.delenv("SIDREC_DATA_DIR", raising=False)
    shipped = dataset_mod.SHIPPED_DATASETS / "sports"
    assert resolve_dataset_dir("sports") in (
        shipped,
        dataset_mod.PROJECT_ROOT / "data" / "raw" / "sports",
    )
    ds = load_dataset_dir(shipped, DataConfig(), "sports")
    # P5/TIGER Sports as counted in ../shared/datasets/README.md (and issue 38)
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (35598, 18357, 296337)
    assert ds.dropped == {"short_sequences": 0, "unused_items": 0}
    assert [m["p5_item_id"] for m in ds.item_meta[1:]] == list(range(1, 18358))
    assert sum(1 for m in ds.item_meta[1:] if m.get("title")) == 18256
    # the table `embed` takes when embed.shipped is on: listed, verified, of these very texts
    texts = [item_text(m) for m in ds.item_meta[1:]]
    table = load_shipped(shipped, "all-MiniLM-L6-v2", texts)
    assert table is not None and table.shape == (ds.num_items, 384)


def test_checksum_mismatch_names_file_and_hashes(tmp_path):
    d = _write(tmp_path / "ds", "u1 A B C\n")
    good = dataset_mod.file_sha256(d / "sequences.txt")
    (d / "SHA256SUMS").write_text(f"{good}  sequences.txt\n")
    ds = load_dataset_dir(d, DataConfig())
    assert ds.sources == {str(d / "sequences.txt"): good}
    (d / "sequences.txt").write_text("u1 A B D\n")
    with pytest.raises(DataError) as exc:
        load_dataset_dir(d, DataConfig())
    msg = str(exc.value)
    assert "sequences.txt" in msg and f"expected {good}" in msg and "\n" not in msg
    assert f"got {dataset_mod.file_sha256(d / 'sequences.txt')}" in msg


def test_checksum_listing_a_missing_file_fails(tmp_path):
    d = _write(tmp_path / "ds", "u1 A B C\n")
    (d / "SHA256SUMS").write_text(f"{'0' * 64}  items.jsonl.gz\n")
    with pytest.raises(DataError, match="items.jsonl.gz"):
        load_dataset_dir(d, DataConfig())


def test_data_sha256_follows_content(tmp_path):
    d = _write(tmp_path / "ds", "u1 A B C\n")
    first = load_dataset_dir(d, DataConfig()).data_sha256()
    (d / "sequences.txt").write_text("u1 A B C D\n")
    assert load_dataset_dir(d, DataConfig()).data_sha256() != first
    assert load_dataset(DataConfig(name="synthetic", synthetic_users=20)).data_sha256() is None


def test_lookup_order_shipped_before_shared(monkeypatch, tmp_path):
    monkeypatch.delenv("SIDREC_DATA_DIR", raising=False)
    monkeypatch.setattr(dataset_mod, "SHIPPED_DATASETS", tmp_path / "shipped")
    monkeypatch.setattr(dataset_mod, "SHARED_DATASETS", tmp_path / "shared")
    _write(tmp_path / "shared" / "toy", "u1 A B C\n")
    assert resolve_dataset_dir("toy") == tmp_path / "shared" / "toy"
    _write(tmp_path / "shipped" / "toy", "u1 A B C\n")
    assert resolve_dataset_dir("toy") == tmp_path / "shipped" / "toy"
    monkeypatch.setenv("SIDREC_DATA_DIR", str(tmp_path / "env"))
    _write(tmp_path / "env" / "toy", "u1 A B C\n")
    assert resolve_dataset_dir("toy") == tmp_path / "env" / "toy"


def test_mostly_empty_item_text_warns_with_counts(tmp_path, caplog):
    from sidrec_core.data.text import warn_empty_texts

    items = [{"asin": "A", "title": "Alpha"}] + [{"asin": k} for k in "BCD"]
    d = _write(tmp_path / "ds", "u1 A B C D\n", items)
    with caplog.at_level("WARNING"):
        save_prepared(load_dataset_dir(d, DataConfig()), tmp_path / "prep")
    assert "3 of 4 items (75%) have no text" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert warn_empty_texts(["Title: A.", "Title: B.", "Unknown item."], "x") == 1
    assert caplog.text == ""


def test_identical_embeddings_warn_with_counts(caplog):
    from sidrec_core.data.embeddings import duplicate_rows

    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8))
    with caplog.at_level("WARNING"):
        check_embeddings(x, 50, "distinct.npy")
    assert caplog.text == ""
    x[10:40] = x[0] + 1e-7  # near-identical to row 0
    assert duplicate_rows(check_embeddings(x, 50, "dup.npy")) == (20, 31)
    assert "dup.npy: 31 of 50 rows are (near-)identical to another row (20 distinct" in caplog.text
    caplog.clear()
    check_embeddings(np.ones((5, 3)), 5, "same.npy")
    assert "same.npy: 5 of 5 rows" in caplog.text and "(1 distinct" in caplog.text
