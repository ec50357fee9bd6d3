"""NTU sample names, the standard benchmark splits and the official sample lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from last_lite.data.ntu_skeleton import (
    in_dataset,
    is_training_sample,
    parse_sample_name,
    read_sample_list,
    split_indices,
)

LISTS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ntu" / "lists"
needs_lists = pytest.mark.skipif(
    not (LISTS / "ntu120_available_samples.txt").is_file(),
    reason=f"NTU sample lists not found at {LISTS} (../shared/data is absent in a plain clone)",
)


def test_parse_sample_name():
    info = parse_sample_name("S017C003P020R002A060.skeleton")
    assert (info.setup, info.camera, info.performer, info.replication, info.action) == (17, 3, 20, 2, 60)
    assert info.label == 59 and info.name == "S017C003P020R002A060"
    assert parse_sample_name("/x/y/S001C001P001R001A001").action == 1
    with pytest.raises(ValueError, match="not an NTU sample name"):
        parse_sample_name("a01_s01_e01_v01")


@pytest.mark.parametrize("name", ["S001C001P001R001A0601.skeleton", "S001C001P001R001A001 (1).skeleton",
                                  "S001C001P001R001A001.skeleton.bak", "S001C001P001R001A001x"])
def test_a_name_that_only_starts_like_a_sample_is_not_one(name):
    with pytest.raises(ValueError, match="not an NTU sample name"):
        parse_sample_name(name)  # a prefix match read the first as action 60, the second as A001
    with pytest.raises(ValueError, match="not an NTU sample name"):
        split_indices([name], "xsub")


def test_rules():
    assert is_training_sample("S001C001P001R001A001", "xsub")
    assert not is_training_sample("S001C001P003R001A001", "xsub")
    assert is_training_sample("S001C002P003R001A001", "xview")
    assert not is_training_sample("S001C001P003R001A001", "xview")
    assert is_training_sample("S020C001P045R001A001", "xsub120")
    assert not is_training_sample("S020C001P044R001A001", "xsub120")
    assert is_training_sample("S020C001P001R001A001", "xset")
    assert not is_training_sample("S019C001P001R001A001", "xset")
    assert in_dataset(parse_sample_name("S017C001P001R001A060"), "ntu60")
    assert not in_dataset(parse_sample_name("S018C001P001R001A001"), "ntu60")
    assert in_dataset(parse_sample_name("S018C001P001R001A120"), "ntu120")
    with pytest.raises(ValueError):
        is_training_sample("S001C001P001R001A001", "xcam")


@needs_lists
@pytest.mark.shared_data
@pytest.mark.parametrize(
    "dataset,benchmark,train,test",
    [
        ("ntu60", "xsub", 40_091, 16_487),
        ("ntu60", "xview", 37_646, 18_932),
        ("ntu120", "xsub120", 63_026, 50_919),
        ("ntu120", "xset", 54_468, 59_477),
    ],
)
def test_split_sizes(dataset, benchmark, train, test):
    names = read_sample_list(LISTS / f"{dataset}_available_samples.txt")
    tr, te = split_indices(names, benchmark)
    assert (len(tr), len(te)) == (train, test)
    assert len(set(tr.tolist()) | set(te.tolist())) == len(names)


@needs_lists
@pytest.mark.shared_data
def test_missing_lists():
    m60 = read_sample_list(LISTS / "ntu60_missing_skeletons.txt")
    m120 = read_sample_list(LISTS / "ntu120_missing_skeletons.txt")
    assert len(m60) == 302 and len(set(m60)) == 302
    assert len(m120) == 535 and len(set(m120)) == 535
    assert set(m60) <= set(m120)
    avail60 = set(read_sample_list(LISTS / "ntu60_available_samples.txt"))
    avail120 = set(read_sample_list(LISTS / "ntu120_available_samples.txt"))
    assert len(avail60) == 56_578 and len(avail120) == 113_945
    assert not avail60 & set(m60) and not avail120 & set(m120)
    assert len(avail60) + len(m60) == 56_880 and len(avail120) + len(m120) == 114_480


def test_list_parsing_is_robust(tmp_path):
    p = tmp_path / "missing.txt"
    p.write_bytes(
        "\ufeff302 of the captured samples in the \"NTU RGB+D\" dataset have missing skeletons.\r\n"
        "If you are working on skeleton-based analysis, please ignore these files.\r\n\r\n"
        "S001C002P005R002A008\r\n  S001C002P006R001A008.skeleton  \r\n# S001C003P002R001A055\r\n"
        "S001C003P002R001A056 trailing note\r\n\r\n".encode("utf-8")
    )
    assert read_sample_list(p) == ["S001C002P005R002A008", "S001C002P006R001A008", "S001C003P002R001A056"]


def test_split_indices_agrees_with_the_per_sample_rule():
    import itertools

    names = [f"S{s:03d}C{c:03d}P{p:03d}R001A{a:03d}"
             for s, c, p, a in itertools.product((1, 2, 17, 18, 32), (1, 2, 3), range(1, 107, 7), (1, 61))]
    for bench in ("xsub", "xview", "xsub120", "xset"):
        tr, te = split_indices(names, bench)
        assert sorted(tr.tolist() + te.tolist()) == list(range(len(names)))
        assert all(is_training_sample(names[i], bench) for i in tr)
        assert not any(is_training_sample(names[i], bench) for i in te)
        infos = [parse_sample_name(n) for n in names]
        assert [x.tolist() for x in split_indices(infos, bench)] == [tr.tolist(), te.tolist()]
    with pytest.raises(ValueError):
        split_indices(["S001C001P001R001A001", "bad"], "xsub")
