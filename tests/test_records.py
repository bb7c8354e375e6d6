"""records.dataclass: the subset of dataclasses our hot-path records use."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schedsync.core import records
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


def test_a_record_made_a_few_times_compiles_no_init_and_one_made_often_does():
    # A cron tick imports some 15 records and makes some 10, a few times each: none compiles.
    @dataclass
    class Lazy:
        a: int
        b: list = field(default_factory=list)

    filler = Lazy.__init__
    made = [Lazy(i) for i in range(records.FILLED)]
    assert Lazy.__init__ is filler and [(m.a, m.b) for m in made] == [(i, []) for i in range(records.FILLED)]
    assert made[0].b is not made[1].b
    made.append(Lazy(99, [3]))
    generated = Lazy.__init__
    assert generated is not filler and generated.__code__.co_varnames[:3] == ("self", "a", "b")
    assert (made[-1].a, made[-1].b, Lazy(5).b) == (99, [3], []) and Lazy.__init__ is generated


@dataclass
class Sample:
    a: int
    b: int
    c: int = 7
    d: list = field(default_factory=list)


CALLS = st.tuples(st.lists(st.integers(0, 9), max_size=5),
                  st.dictionaries(st.sampled_from(["a", "b", "c", "d", "e", "self"]), st.integers(0, 9), max_size=4))


@given(CALLS)
def test_the_loop_fills_a_record_as_the_generated_init_does(call):
    args, kwargs = call
    names, defaults = Sample.__record_fields__, {"c": 7, "d": records._Factory(list)}
    generated = records._generated_init(names, defaults)
    outcomes = []
    for fill in (lambda obj: records._fill(obj, names, defaults, tuple(args), kwargs),
                 lambda obj: generated(obj, *args, **kwargs)):
        obj = object.__new__(Sample)
        try:
            fill(obj)
            outcomes.append(vars(obj))
        except TypeError:
            outcomes.append(TypeError)
    assert outcomes[0] == outcomes[1], call
    if outcomes[0] is not TypeError:
        assert list(outcomes[0]) == list(names)  # the same order of attributes


def test_a_field_without_default_after_one_with_is_refused_when_declared():
    with pytest.raises(TypeError, match="non-default argument 'b' follows default argument"):
        @dataclass
        class Bad:
            a: int = 1
            b: int


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
