"""records.dataclass: the subset of dataclasses our hot-path records use."""

import pytest

from schedsync.core.records import dataclass, field, replace


@dataclass
class Point:
    x: int
    y: int = 0
    tags: list = field(default_factory=list)


def test_it_fills_defaults_and_fresh_factories():
    a, b = Point(1), Point(2, 3)
    assert (a.x, a.y, a.tags, b.y) == (1, 0, [], 3)
    a.tags.append("t")
    assert Point(1).tags == []


def test_it_compares_by_fields_and_replaces():
    assert Point(1, 2) == Point(x=1, y=2) and Point(1) != Point(2)
    assert replace(Point(1, 2), y=5) == Point(1, 5)
    assert repr(Point(1)) == "Point(x=1, y=0, tags=[])"


def test_it_rejects_missing_and_unknown_arguments():
    with pytest.raises(TypeError):
        Point()
    with pytest.raises(TypeError):
        Point(1, z=2)
    with pytest.raises(TypeError):
        Point(1, x=2)
