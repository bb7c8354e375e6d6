"""``@dataclass`` for plain records, without importing dataclasses.

``import dataclasses`` pulls in inspect (and ast, dis, tokenize), and each
decorated class compiles generated code: together the largest cost of a cron
tick (measured: 6.4x -> 3.5x ``python -c pass`` for ``schedsync run``). Our
records need only ``__init__`` with defaults, ``__eq__``, ``__repr__`` and
``replace``. Health and report's views use it too: every read command
imports them (dataclasses: ~10 ms of ``status``).
"""

_MISSING = object()
FILLED = 8  # instances of a record filled by a loop before its __init__ is generated


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make):
        self.make = make


def field(*, default=_MISSING, default_factory=_MISSING):
    return default if default_factory is _MISSING else _Factory(default_factory)


def dataclass(cls):
    names, defaults = [], {}
    for klass in reversed(cls.__mro__[:-1]):
        for name in klass.__dict__.get("__annotations__", {}):
            if name not in names:
                names.append(name)
            if name in klass.__dict__:
                defaults[name] = klass.__dict__[name]
    for name in defaults:
        if name in cls.__dict__:
            delattr(cls, name)
    names = tuple(names)
    defaults = {name: value for name, value in defaults.items() if value is not _MISSING}  # field()
    for before, after in zip(names, names[1:], strict=False):
        if before in defaults and after not in defaults:  # as the generated __init__ would say
            raise TypeError(f"non-default argument {after!r} follows default argument")
    made = 0

    def __init__(self, *args, **kwargs):
        # Generated and compiled only for a record made often (a budget's buckets): a cron
        # tick imports some 15 records and makes some 10, a few times each, and compiling
        # one costs about 0.1 ms, some 20 times filling one by the loop.
        nonlocal made
        made += 1
        if made <= FILLED:
            _fill(self, names, defaults, args, kwargs)
            return
        init = cls.__init__ = _generated_init(names, defaults)
        init(self, *args, **kwargs)

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in names)

    def __repr__(self):
        return f"{cls.__qualname__}({', '.join(f'{n}={getattr(self, n)!r}' for n in names)})"

    cls.__init__, cls.__eq__, cls.__repr__, cls.__hash__ = __init__, __eq__, __repr__, None
    cls.__record_fields__ = names
    return cls


def _fill(self, names: tuple, defaults: dict, args: tuple, kwargs: dict) -> None:
    """What the generated __init__ does, by a loop: the same fields, defaults and TypeErrors."""
    if len(args) > len(names):
        raise TypeError(f"__init__() takes {len(names) + 1} positional arguments but {len(args) + 1} were given")
    given = dict(zip(names, args, strict=False))
    for key, value in kwargs.items():
        if key in given:
            raise TypeError(f"__init__() got multiple values for argument {key!r}")
        if key not in names:
            raise TypeError(f"__init__() got an unexpected keyword argument {key!r}")
        given[key] = value
    missing = [name for name in names if name not in given and name not in defaults]
    if missing:
        raise TypeError(f"__init__() missing required arguments: {', '.join(map(repr, missing))}")
    for name in names:
        if name in given:
            value = given[name]
        else:
            value = defaults[name]
            if isinstance(value, _Factory):
                value = value.make()
        setattr(self, name, value)


def _generated_init(names: tuple, defaults: dict):
    """A generated __init__, as dataclasses makes: a generic one looping over the fields
    cost a fifth of a budget acquire."""
    params, body, scope = ["self"], [], {"_MISSING": _MISSING}
    for name in names:
        default = defaults.get(name, _MISSING)
        if default is _MISSING:
            params.append(name)
            body.append(f" self.{name} = {name}")
        elif isinstance(default, _Factory):
            scope[f"_f_{name}"] = default.make
            params.append(f"{name}=_MISSING")
            body.append(f" self.{name} = _f_{name}() if {name} is _MISSING else {name}")
        else:
            scope[f"_d_{name}"] = default
            params.append(f"{name}=_d_{name}")
            body.append(f" self.{name} = {name}")
    exec(f"def __init__({', '.join(params)}):\n" + ("\n".join(body) or " pass"), scope)
    return scope["__init__"]


def field_names(record) -> tuple:
    """The fields of a record class or instance, in order."""
    return record.__record_fields__


def replace(obj, **changes):
    values = {n: getattr(obj, n) for n in obj.__record_fields__}
    values.update(changes)
    return obj.__class__(**values)
