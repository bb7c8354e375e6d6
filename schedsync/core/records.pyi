# What type checkers see of records.py: its ``dataclass`` makes classes as
# dataclasses.dataclass does (an __init__ from the annotated fields with their
# defaults, __eq__, __repr__), which dataclass_transform tells them. A stub, so
# that records.py imports nothing (typing included) on `run`'s start-up path.
from collections.abc import Callable
from typing import Any, TypeVar

from typing_extensions import dataclass_transform

_T = TypeVar("_T")

def field(*, default: Any = ..., default_factory: Callable[[], Any] = ...) -> Any: ...
@dataclass_transform(field_specifiers=(field,))
def dataclass(cls: type[_T]) -> type[_T]: ...
def field_names(record: object) -> tuple[str, ...]: ...
def replace(obj: _T, **changes: Any) -> _T: ...
