"""Property tests: whatever a spec file or a VOC annotation holds, heatjob answers with a
valid result or its own one-line error, never another exception.

Example counts are kept modest (the whole file runs in seconds); the strategies lean on
near-misses of real input (the right keys with wrong values, real tags with odd text),
where the bugs are, rather than on random bytes alone.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from heatjob.data.base import VOC_CLASSES, SampleRecord
from heatjob.data.voc import parse_annotation
from heatjob.errors import DataError, SpecError
from heatjob.spec import _SECTIONS, JobSpec, load_spec, parse_spec, to_toml

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
WORK = Path(tempfile.mkdtemp(prefix="heatjob-fuzz-"))

# ---------------------------------------------------------------- the job spec

KNOWN_KEYS = {name: [f for f in cls.__dataclass_fields__] for name, cls in _SECTIONS.items()}
GOOD = {
    "dataset": {"kind": "synthetic"},
    "model": {"arch": "small_cnn"},
    "attribution": {"composites": ["EpsilonPlusFlat"]},
    "store": {"path": "out/x.zarr"},
}
text = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF, exclude_characters="\x7f"))
scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    text,
    st.sampled_from(
        [
            "labels",
            "all",
            "predicted:3",
            "predicted:0",
            "voc",
            "synthetic",
            "float16",
            "cpu",
            "small_cnn",
            "EpsilonPlus",
            "",
        ]
    ),
)
toml_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(["a", "b"]), inner)
    ),
    max_leaves=6,
)


@st.composite
def spec_tables(draw) -> dict:
    """A valid spec with a few keys replaced, added or removed, sometimes a stray section."""
    raw = {name: dict(values) for name, values in GOOD.items()}
    for _ in range(draw(st.integers(0, 4))):
        section = draw(st.sampled_from([*_SECTIONS, "extra"]))
        key = draw(st.sampled_from([*KNOWN_KEYS.get(section, []), "bogus"]))
        if draw(st.booleans()) and key in raw.get(section, {}):
            del raw[section][key]
        else:
            raw.setdefault(section, {})[key] = draw(toml_values)
    if draw(st.integers(0, 9)) == 0:
        raw.pop(draw(st.sampled_from(sorted(raw))))
    return raw


def check_spec_outcome(load) -> None:
    """`load()` gives a JobSpec that is valid and round-trips, or a one-line SpecError."""
    try:
        spec = load()
    except SpecError as error:
        message = str(error)
        assert message and "\n" not in message
        return
    assert isinstance(spec, JobSpec)
    assert spec.run.batch_size >= 1 and spec.run.shard_size >= 0 and spec.run.workers >= 0
    assert spec.dataset.image_size >= 8 and spec.attribution.composites
    assert all(math.isfinite(v) for v in (*spec.model.mean, *spec.model.std))
    assert parse_spec(spec.to_dict(), source=spec.source) == spec


@FUZZ
@given(raw=spec_tables())
def test_spec_files_near_valid_ones_load_or_fail_cleanly(raw):
    path = WORK / "spec.toml"
    path.write_text(to_toml(raw))
    check_spec_outcome(lambda: load_spec(path))


@FUZZ
@given(
    source=st.one_of(
        st.text(max_size=200),
        st.sampled_from(
            ["[dataset", "a = = 1", "[[dataset]]\nkind = 1", "\x00", '["a\\nb"]\nx = 1']
        ),
        spec_tables().map(to_toml).map(lambda t: t.replace("[model]", '[model]\n"k\\n" = 1')),
    )
)
def test_any_text_as_a_spec_file_loads_or_fails_cleanly(source):
    path = WORK / "any.toml"
    path.write_bytes(source.encode("utf-8", "surrogatepass"))
    check_spec_outcome(lambda: load_spec(path))


big_numbers = st.sampled_from([10**400, -(10**400), 2**63, 2**31, 1e308])  # JSON has no bound
json_values = st.recursive(
    st.one_of(
        st.none(), st.integers(), big_numbers, st.floats(), st.booleans(), st.text(max_size=8)
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


@FUZZ
@given(
    raw=st.one_of(
        json_values,
        spec_tables(),
        st.builds(
            lambda good, v, key: {**good, "model": {"arch": "x", key: [v, 1, 1]}},
            spec_tables(),
            st.one_of(big_numbers, json_values),
            st.sampled_from(["mean", "std"]),
        ),
    )
)
def test_a_spec_from_json_attributes_parses_or_fails_cleanly(raw):
    """parse_spec also reads the spec stored in a store's attributes (JSON, unbounded ints)."""
    check_spec_outcome(lambda: parse_spec(raw, source="store attrs"))


# ---------------------------------------------------------------- VOC annotations

numbers = st.one_of(
    st.integers(-50, 400).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "nan", "inf", "-inf", "1e400", "12abc", "0x10", "1_000", "٣"]),
    st.text(max_size=6),
)


@st.composite
def annotations(draw) -> str:
    """VOC XML with random text in real tags, or broken XML."""
    objects = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from([*VOC_CLASSES[:4], "", "Dog", "head", "<x>"]))
        coords = {t: draw(numbers) for t in ("xmin", "ymin", "xmax", "ymax")}
        if draw(st.integers(0, 4)):
            coords = {  # mostly plausible boxes, some sticking out of the image
                "xmin": str(draw(st.integers(-5, 80))),
                "ymin": str(draw(st.integers(-5, 80))),
                "xmax": str(draw(st.integers(-5, 90))),
                "ymax": str(draw(st.integers(-5, 90))),
            }
        box = "".join(f"<{t}>{v}</{t}>" for t, v in coords.items() if draw(st.integers(0, 9)))
        bndbox = f"<bndbox>{box}</bndbox>" if draw(st.integers(0, 9)) else ""
        difficult = draw(
            st.sampled_from(
                [
                    "",
                    "<difficult>0</difficult>",
                    "<difficult>1</difficult>",
                    "<difficult>inf</difficult>",
                    "<difficult>2</difficult>",
                ]
            )
        )
        objects.append(f"<object><name>{name}</name>{difficult}{bndbox}</object>")
    size = draw(st.sampled_from(["", "<size><width>64</width><height>48</height></size>"])) or (
        f"<size><width>{draw(numbers)}</width><height>{draw(numbers)}</height></size>"
    )
    xml = f"<annotation>{size}{''.join(objects)}</annotation>"
    cut = draw(st.integers(0, 12))
    if cut == 0:
        xml = xml[: draw(st.integers(0, len(xml)))]  # truncated file
    elif cut == 1:
        xml = (
            '<?xml version="1.0" encoding="'
            + draw(st.sampled_from(["utf-16", "bogus", "latin-1", "utf-32"]))
            + '"?>'
            + xml
        )
    return xml


IMAGE = WORK / "image.jpg"
Image.new("RGB", (64, 48), (10, 20, 30)).save(IMAGE)


def check_annotation_outcome(xml: bytes, with_image: bool) -> None:
    path = WORK / "a.xml"
    path.write_bytes(xml)
    try:
        record = parse_annotation(path, "id", IMAGE if with_image else None)
    except DataError as error:
        message = str(error)
        assert message and "\n" not in message and str(path) in message
        return
    assert isinstance(record, SampleRecord)
    assert 0 < record.height < 2**31 and 0 < record.width < 2**31
    boxes = record.boxes
    assert np.isfinite(boxes).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= record.width).all() and (boxes[:, 3] <= record.height).all()
    assert (boxes[:, 0] < boxes[:, 2]).all() and (boxes[:, 1] < boxes[:, 3]).all()
    assert set(record.labels) <= set(range(len(VOC_CLASSES)))
    assert record.labels == tuple(sorted(set(record.box_classes.tolist())))


@FUZZ
@given(xml=annotations(), with_image=st.booleans())
def test_voc_annotations_near_real_ones_read_or_fail_cleanly(xml, with_image):
    check_annotation_outcome(xml.encode("utf-8", "surrogatepass"), with_image)


@FUZZ
@given(data=st.binary(max_size=300), with_image=st.booleans())
def test_any_bytes_as_an_annotation_read_or_fail_cleanly(data, with_image):
    check_annotation_outcome(data, with_image)
