"""The base of every typed object: a dataclass built from a JSON object.

Fields the API adds later are kept, not rejected: they land in ``extra`` and stay reachable by
subscript (``obj["new_field"]``), and ``to_dict()`` returns the JSON exactly as received. The
subscript also reads the typed fields (``instance["region"]["name"]``), so code written for
clients that return plain dicts (lambda-cloud-python) keeps working on these objects.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar, Dict, Iterator, List, Mapping, Optional, Type, TypeVar, Union

M = TypeVar("M", bound="Model")

# A nested converter: a Model class, or a one-element list holding one (a list of those), or a
# one-element dict {str: Model} (a mapping of those).
Nested = Union[Type["Model"], List[Type["Model"]], Dict[str, Type["Model"]]]


def _convert(spec: Optional[Nested], value: Any) -> Any:
    if spec is None or value is None:
        return value
    if isinstance(spec, list):
        return [_convert(spec[0], v) for v in value] if isinstance(value, list) else value
    if isinstance(spec, dict):
        inner = next(iter(spec.values()))
        return {k: _convert(inner, v) for k, v in value.items()} if isinstance(value, dict) else value
    return spec.from_dict(value) if isinstance(value, dict) else value


@dataclasses.dataclass
class Model:
    """Base of the typed objects. Subclasses are dataclasses whose fields all have defaults
    (an absent field is ``None`` or empty, never an error) and may set ``_nested`` to convert
    nested objects. ``extra`` (not a dataclass field, so not in ``repr`` or ``==``) holds the
    JSON fields the class does not declare."""

    _nested: ClassVar[Dict[str, Nested]] = {}
    if TYPE_CHECKING:  # set per instance, deliberately not a dataclass field
        extra: Dict[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra", {})

    @classmethod
    def from_dict(cls: Type[M], data: Mapping[str, Any]) -> M:
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        kwargs: Dict[str, Any] = {}
        extra: Dict[str, Any] = {}
        for k, v in data.items():
            if k in names:
                kwargs[k] = _convert(cls._nested.get(k), v)
            else:
                extra[k] = v
        obj = cls(**kwargs)
        obj.extra = extra
        object.__setattr__(obj, "_json", dict(data))
        return obj

    def to_dict(self) -> Dict[str, Any]:
        """The JSON object as the server sent it (for objects built from a response), else the
        fields as plain JSON."""
        raw = getattr(self, "_json", None)
        if raw is not None:
            return dict(raw)
        return _plain(self)

    # Mapping-style read access, for code written against dict-returning clients.
    def __getitem__(self, key: str) -> Any:
        if key in {f.name for f in dataclasses.fields(self)}:
            return getattr(self, key)
        if key in self.extra:
            return self.extra[key]
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            v = self[key]
        except KeyError:
            return default
        return v

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key, _MISSING) is not _MISSING

    def keys(self) -> List[str]:
        return [f.name for f in dataclasses.fields(self)] + list(self.extra)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())


_MISSING = object()


def _plain(v: Any) -> Any:
    if isinstance(v, Model):
        out = {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        out.update(v.extra)
        return out
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v
