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


def test_the_generated_init_is_compiled_on_the_first_instance_only():
    # A cron tick imports some 15 records and makes some 10: the others cost no compiling.
    @dataclass
    class Lazy:
        a: int
        b: list = field(default_factory=list)

    assert Lazy.__init__.__code__.co_varnames[:3] == ("self", "args", "kwargs")
    first = Lazy(1)
    generated = Lazy.__init__
    assert generated.__code__.co_varnames[:3] == ("self", "a", "b")
    assert (first.a, first.b, Lazy(2, [3]).b) == (1, [], [3]) and Lazy.__init__ is generated


def test_subclasses_get_their_fields_whichever_is_made_first():
    @dataclass
    class Base:
        a: int
        b: int

    @dataclass
    class Child(Base):
        c: int = 3

    class Plain(Base):
        pass

    assert (Child(1, 2).a, Child(1, 2).b, Child(1, 2).c) == (1, 2, 3)
    assert (Plain(5, 6).a, Plain(5, 6).b) == (5, 6) and not hasattr(Plain(5, 6), "c")
    assert Base(7, 8) == Base(a=7, b=8) and repr(Child(1, 2, c=4)).endswith("Child(a=1, b=2, c=4)")
    with pytest.raises(TypeError):
        Base(1, 2, c=3)
