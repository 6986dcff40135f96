"""Parse a /<app>/predict body into wire-ready inputs (pure; no I/O).

Each input becomes the bytes a model container receives: packed little-endian int32,
float32 or float64 arrays, raw bytes for ``bytes`` (sent base64 in JSON), UTF-8 for
``strings``. Unlike Clipper, a JSON integer is accepted where doubles or floats are
expected (``1`` means ``1.0``), base64 is checked strictly, and NaN/Infinity are refused.
"""
import base64
import binascii
import struct
from array import array
from typing import List, NamedTuple, Optional

import orjson
import simdjson

from clipper.datatypes import InputType
from clipper.errors import RequestError

PREDICT_SCHEMA = """
  {
   "input" := [double] | [int] | [string] | [byte] | [float],
  }
"""

_INT32_MIN, _INT32_MAX = -(2 ** 31), 2 ** 31 - 1
_ELEMENT_NAMES = {
    InputType.INTS: "int",
    InputType.FLOATS: "float",
    InputType.DOUBLES: "double",
}


class InputError(RequestError):
    """The request body cannot be served; the message says what to fix."""

    kind = "Json error"


class PredictRequest(NamedTuple):
    inputs: List[bytes]
    is_batch: bool
    version: Optional[str]


def json_type_name(value) -> str:
    """Type names as Clipper's error messages spell them."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (int, float)):
        return "Number"
    if isinstance(value, str):
        return "String"
    if isinstance(value, list):
        return "Array"
    return "Object"


def type_mismatch(key: str, expected: str, value) -> str:
    """json_util.cpp's text for a key whose value is not of the type its getter reads."""
    return f"Type mismatch! JSON key {key} expected type {expected} but found type {json_type_name(value)}"


class SchemaError(InputError):
    """A body that does not fit ``schema``; ``reason`` says how, so that a route that reuses
    these checks (/update) can give the same reason with its own schema."""

    def __init__(self, reason: str, schema: str = PREDICT_SCHEMA):
        super().__init__(f"Error parsing JSON: {reason}. Expected JSON schema: {schema}")
        self.reason = reason


def load_json_object(body: bytes, not_object: str = "body must be a JSON object, found {}") -> dict:
    """Decode a request body that must be a JSON object (orjson refuses NaN and Infinity).
    ``not_object``: the error for other JSON, formatted with its type's name."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise SchemaError(f"body is not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise SchemaError(not_object.format(json_type_name(document)))
    return document


def parse_predict_body(body: bytes, input_type: InputType,
                       max_batch_size: Optional[int] = None) -> PredictRequest:
    """``max_batch_size``: the most inputs an ``input_batch`` may hold (413 beyond)."""
    if input_type is InputType.DOUBLES:
        flat = _parse_flat_doubles(body)
        if flat is not None:
            return flat
    return _parse_document(body, input_type, max_batch_size)


def _parse_document(body: bytes, input_type: InputType, max_batch_size: Optional[int]) -> PredictRequest:
    """Any body: decoded whole by orjson, checked key by key."""
    document = load_json_object(body)
    version = parse_version(document["version"]) if "version" in document else None
    # Every ``true`` has an r, every ``false`` an f; two byte scans (memchr) are much cheaper
    # than a substring search, and a body that has either letter elsewhere is checked fully.
    may_hold_bools = body.find(b"r") >= 0 or body.find(b"f") >= 0   # find: see _parse_flat_doubles
    if "input" in document:
        return PredictRequest([encode_input(document["input"], input_type, False, may_hold_bools)],
                              False, version)
    if "input_batch" in document:
        batch = document["input_batch"]
        if not isinstance(batch, list):
            raise SchemaError(type_mismatch("input_batch", "Array", batch))
        if max_batch_size is not None and len(batch) > max_batch_size:
            raise InputError(f"The batch has {len(batch)} inputs, more than {max_batch_size}, the "
                             "limit of this server (max_batch_size): send it in smaller batches",
                             413, "Batch too large")
        inputs = [encode_input(item, input_type, True, may_hold_bools) for item in batch]
        # A batch of one is answered unwrapped, as Clipper does.
        return PredictRequest(inputs, len(inputs) != 1, version)
    raise SchemaError("JSON object does not have required keys input or input_batch")


# One parser for every request: a document is read whole and dropped before the next one. A
# parser keeps the buffers of the largest document it has read (about 4.5 bytes per byte):
# bounded here, so a larger body takes the orjson path, which keeps nothing.
FLAT_PATH_MAX_BYTES = 1 << 20
_FLAT_PARSER = simdjson.Parser(max_capacity=FLAT_PATH_MAX_BYTES)
_UTF8_BOM = b"\xef\xbb\xbf"
_VERSION_TYPES = (str, int)     # else the general path words the error


def _parse_flat_doubles(body: bytes) -> Optional[PredictRequest]:
    """The common prediction, one flat list of doubles under "input" (and perhaps a
    "version"), read by simdjson (a validating parser) straight into packed doubles: no
    Python float is made, half the cost of orjson's floats packed again (bench/inprocess.py).

    None for any other body, or one simdjson refuses: the general path reads it and words
    the error. What is refused here keeps the answers identical: an escape (a key could be
    "input" in disguise), a second "[" (as_buffer flattens nested lists), a repeated key
    (orjson keeps the last, simdjson finds the first), a byte-order mark (orjson refuses it)."""
    # find(), not "in": bytes.__contains__ first tries its argument as an integer, and on
    # Python 3.11 raises and clears a TypeError for every bytes needle (some 1,500
    # instructions, almost 1% of a request; bench/instructions.py).
    if (len(body) > FLAT_PATH_MAX_BYTES or body.find(b"\\") >= 0 or body.find(b"[") != body.rfind(b"[")
            or body.startswith(_UTF8_BOM)):
        return None
    try:
        document = _FLAT_PARSER.parse(body)
        if type(document) is not simdjson.Object:
            return None
        values, version = document.get("input"), None
        if len(document) > 1:             # the usual body has "input" alone
            keys = list(document.keys())
            if len(set(keys)) != len(keys):
                return None
            if "version" in keys:
                version = document.get("version")
                if type(version) not in _VERSION_TYPES:
                    return None
                version = parse_version(version)
        if type(values) is not simdjson.Array:     # also: no "input"
            return None
        packed = bytes(values.as_buffer(of_type="d"))     # refuses any element not a number
    except Exception:        # whatever simdjson refuses, the general path answers
        return None
    return PredictRequest([packed], False, version)


def parse_version(version) -> str:
    """A pinned version: a string, as Clipper has it (null is refused, as Clipper does), or an
    integer, which we take for its digits."""
    if isinstance(version, str):
        return version
    if isinstance(version, int) and not isinstance(version, bool):
        return str(version)
    raise SchemaError(type_mismatch("version", "String", version))


def encode_input(value, input_type: InputType, in_batch: bool = False, may_hold_bools: bool = True) -> bytes:
    """One JSON input (of "input", or an element of "input_batch") -> the bytes a container
    receives for it. ``may_hold_bools``: False when the JSON text cannot hold a ``true`` or
    ``false``, which allows a faster check. Error texts are Clipper's (json_util.cpp), which
    names the key "input" in a batch too; where one has a reason to add, it follows."""
    if input_type in (InputType.STRINGS, InputType.BYTES):
        if not isinstance(value, str):
            found = json_type_name(value)
            if not in_batch:
                raise SchemaError(type_mismatch("input", "String", value))
            if input_type is InputType.STRINGS:
                raise SchemaError(f"Array input of type {found} is not of type string")
            raise SchemaError(f"PredictionData of type {found} is not of type base64-encoded string")
        if input_type is InputType.STRINGS:
            return value.encode("utf-8", "surrogatepass")
        try:
            # Padding may be left out, as Clipper's decoder allowed (base64_test.cpp, NoPadding)
            return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise SchemaError("Input of key input is not a valid base64-encoded string "
                              "(the standard alphabet, A-Z a-z 0-9 + /)") from None
    if not isinstance(value, list):
        if in_batch:
            raise SchemaError(f"Array input of type {json_type_name(value)} is not of type array")
        raise SchemaError(type_mismatch("input", "Array", value))
    return _encode_numbers(value, input_type, may_hold_bools)


_NUMBER_TYPES = frozenset((float, int))   # exact types: a bool is not a JSON number
_PACK_CODES = {InputType.INTS: "i", InputType.FLOATS: "f", InputType.DOUBLES: "d"}


def _encode_numbers(values: list, input_type: InputType, may_hold_bools: bool = True) -> bytes:
    if not may_hold_bools:
        # struct refuses any non-number and any int32/float32 out of range by itself; only a
        # bool would pass for a number, and there is none. Twice as fast as the checks
        # below, which name the element at fault when struct refuses.
        try:
            return struct.pack("<%d%s" % (len(values), _PACK_CODES[input_type]), *values)
        except (struct.error, OverflowError):
            pass
    if input_type is InputType.INTS:
        # bool is a subclass of int in Python but not a JSON number.
        if not all(type(v) is int and _INT32_MIN <= v <= _INT32_MAX for v in values):
            raise _element_error(values, input_type)
        return array("i", values).tobytes()
    if not _NUMBER_TYPES.issuperset(map(type, values)):   # one pass in C, not per element
        raise _element_error(values, input_type)
    if input_type is InputType.FLOATS:
        # struct's rule, as on the fast path above: a value that rounds to a finite float32
        # is in range (an explicit bound refused 3.4028235e38, which the fast path took).
        try:
            return struct.pack("<%df" % len(values), *values)
        except OverflowError:
            raise _not_of_type("Number", input_type, "a value is outside the float32 range") from None
    try:
        return array("d", values).tobytes()
    except OverflowError:
        raise _not_of_type("Number", input_type, "an integer too large for a double") from None


def _not_of_type(found: str, input_type: InputType, reason: str = "") -> SchemaError:
    return SchemaError(f"Array input of type {found} is not of type {_ELEMENT_NAMES[input_type]}"
                       + (f" ({reason})" if reason else ""))


def _element_error(values: list, input_type: InputType) -> InputError:
    """Name the first element that does not fit, and why."""
    for value in values:
        if type(value) is not int and type(value) is not float:
            return _not_of_type(json_type_name(value), input_type)
        if input_type is InputType.INTS and type(value) is float:
            return _not_of_type("Number", input_type, f"{value!r}: write integers without a decimal point")
        if input_type is InputType.INTS and not _INT32_MIN <= value <= _INT32_MAX:
            return _not_of_type("Number", input_type, f"{value} is outside the int32 range")
    raise AssertionError("no invalid element found")  # callers check before calling
