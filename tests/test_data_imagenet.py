"""kind = "imagenet": a generated ILSVRC-validation layout read back through the reader,
boxes against xml.etree's reading of the same files."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
from factories import make_imagenet_folder

from heatjob.data import open_dataset, read_records
from heatjob.errors import DataError


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return make_imagenet_folder(tmp_path_factory.mktemp("imagenet"), n=7)


def _open(layout, synsets=None, limit=0):
    return open_dataset(
        "imagenet",
        str(layout.root),
        "val",
        limit,
        annotations=str(layout.annotations),
        synsets=str(synsets or layout.synsets),
    )


def test_classes_follow_the_synset_list_and_shared_names_stay_unique(layout):
    dataset = _open(layout)
    lines = layout.synsets.read_text().splitlines()
    assert dataset.wnids == [line.split()[0] for line in lines] == layout.wnids
    first_names = [line.split(" ", 1)[1].split(",")[0] for line in lines]
    assert first_names[0] == first_names[1] == "crane"
    assert dataset.classes[:2] == [f"crane ({layout.wnids[0]})", f"crane ({layout.wnids[1]})"]
    assert dataset.classes[2:] == first_names[2:]
    assert len(set(dataset.classes)) == len(dataset.classes)


def test_boxes_and_labels_equal_an_independent_reading_of_the_xmls(layout):
    dataset = _open(layout)
    assert dataset.ids() == layout.image_ids  # file-name order
    failures: dict[int, str] = {}
    records = read_records(dataset, failures=failures)
    read = 0
    for index, record in enumerate(records):
        if index in failures:
            continue
        root = ET.parse(layout.annotations / f"{record.id}.xml").getroot()
        objects = root.findall("object")
        expected = np.array(
            [
                [float(o.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")]
                for o in objects
            ]
        )
        expected[:, :2] -= 1  # 1-based inclusive -> 0-based half-open
        np.testing.assert_array_equal(record.boxes, expected.astype(np.float32))
        classes = [layout.wnids.index(o.findtext("name")) for o in objects]
        assert record.box_classes.tolist() == classes
        assert record.labels == (classes[0],)  # the labelled class: one target per image
        assert (record.width, record.height) == (
            int(root.findtext("size/width")),
            int(root.findtext("size/height")),
        )
        read += 1
    assert read == len(layout.image_ids) - 2


def test_a_missing_xml_and_an_unknown_synset_fail_their_samples(layout):
    dataset = _open(layout)
    failures: dict[int, str] = {}
    read_records(dataset, failures=failures)
    by_id = {layout.image_ids[i]: reason for i, reason in failures.items()}
    assert set(by_id) == {layout.missing_xml, layout.unknown_synset}
    assert "annotation not found" in by_id[layout.missing_xml]
    assert "'n99999999' (not a synset of" in by_id[layout.unknown_synset]
    assert str(layout.synsets) in by_id[layout.unknown_synset]


def test_limit_keeps_the_first_images(layout):
    assert _open(layout, limit=3).ids() == layout.image_ids[:3]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("n00000001 a\nbanana split\n", ":2: expected 'nXXXXXXXX name, ...'"),
        ("n00000001 a\nn00000001 b\n", "synset n00000001 is listed twice"),
        ("\n\n", "synset list is empty"),
    ],
)
def test_a_bad_synset_list_is_one_line_naming_the_file(layout, tmp_path, text, fragment):
    bad = tmp_path / "synsets.txt"
    bad.write_text(text)
    with pytest.raises(DataError, match=fragment.replace("(", r"\(").replace(".", r"\.")) as e:
        _open(layout, synsets=bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
