"""Clipper's five input types: their RPC codes, names and memory layouts."""
import enum


class InputType(enum.IntEnum):
    """Codes as sent in RPC frames (Clipper's ``DataType`` enum)."""

    BYTES = 0
    INTS = 1
    FLOATS = 2
    DOUBLES = 3
    STRINGS = 4

    @property
    def canonical_name(self) -> str:
        """The spelling Clipper stores in Redis and returns from /admin."""
        return _CANONICAL[self]

    @property
    def numpy_dtype(self):
        """Element type a model container sees (bytes arrive as signed int8, as in Clipper).
        numpy is imported here, not above: the frontends never need it (14 MiB each)."""
        import numpy as np
        code = _NUMPY_DTYPES[self]
        return None if code is None else np.dtype(code)

    @classmethod
    def parse(cls, name: str) -> "InputType":
        """Accept every spelling Clipper accepts (case-sensitive), else ValueError."""
        try:
            return _ALIASES[name]
        except (KeyError, TypeError):
            raise ValueError(
                f"{name!r} is not a valid input type; use one of "
                "'bytes', 'ints', 'floats', 'doubles' or 'strings'") from None


_CANONICAL = {
    InputType.BYTES: "bytes",
    InputType.INTS: "integers",
    InputType.FLOATS: "floats",
    InputType.DOUBLES: "doubles",
    InputType.STRINGS: "strings",
}

_NUMPY_DTYPES = {
    InputType.BYTES: "i1",
    InputType.INTS: "<i4",
    InputType.FLOATS: "<f4",
    InputType.DOUBLES: "<f8",
    InputType.STRINGS: None,
}

_ALIASES = {
    **{alias: InputType.BYTES for alias in ("bytes", "byte", "b")},
    **{alias: InputType.INTS for alias in ("integers", "ints", "integer", "int", "i")},
    **{alias: InputType.FLOATS for alias in ("floats", "float", "f")},
    **{alias: InputType.DOUBLES for alias in ("doubles", "double", "d")},
    **{alias: InputType.STRINGS for alias in ("strings", "string", "str", "strs", "s")},
}
