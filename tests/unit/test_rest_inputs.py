"""Parsing /predict bodies into the bytes a container receives, for all five input types."""
import base64
import json
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clipper.container.closure import shape_batch
from clipper.datatypes import InputType
from clipper.rest.inputs import (
    FLAT_PATH_MAX_BYTES, InputError, _parse_document, _parse_flat_doubles, parse_predict_body)
from clipper.rest import inputs as inputs_module, responses

finite_doubles = st.floats(allow_nan=False, allow_infinity=False)
finite_floats = st.floats(allow_nan=False, allow_infinity=False, width=32)
int32s = st.integers(-(2 ** 31), 2 ** 31 - 1)


def body(document) -> bytes:
    return json.dumps(document).encode()


def decoded(input_type, raw):
    """What the model function receives for one parsed input."""
    return shape_batch(input_type, [raw])[0]


@given(st.lists(finite_doubles, max_size=50))
def test_doubles_round_trip(values):
    parsed = parse_predict_body(body({"input": values}), InputType.DOUBLES)
    assert decoded(InputType.DOUBLES, parsed.inputs[0]).tolist() == values


@given(st.lists(finite_floats, max_size=50))
def test_floats_round_trip(values):
    parsed = parse_predict_body(body({"input": values}), InputType.FLOATS)
    assert decoded(InputType.FLOATS, parsed.inputs[0]).tolist() == values


@given(st.lists(int32s, max_size=50))
def test_ints_round_trip(values):
    parsed = parse_predict_body(body({"input": values}), InputType.INTS)
    assert decoded(InputType.INTS, parsed.inputs[0]).tolist() == values


@given(st.text(max_size=50))
def test_strings_round_trip(text):
    parsed = parse_predict_body(body({"input": text}), InputType.STRINGS)
    assert decoded(InputType.STRINGS, parsed.inputs[0]) == text.encode("utf-8", "surrogatepass")


@given(st.binary(max_size=50))
def test_bytes_round_trip(raw):
    parsed = parse_predict_body(body({"input": base64.b64encode(raw).decode()}), InputType.BYTES)
    assert decoded(InputType.BYTES, parsed.inputs[0]).tobytes() == raw
    assert decoded(InputType.BYTES, parsed.inputs[0]).dtype == np.int8   # as Clipper hands bytes over


@given(st.binary(max_size=50))
def test_bytes_without_base64_padding_read_as_with_it(raw):
    """Clipper's decoder took base64 without its '=' padding (base64_test.cpp, NoPadding), as
    many encoders write it (Go's RawStdEncoding, JavaScript libraries)."""
    padded = base64.b64encode(raw).decode()
    parsed = parse_predict_body(body({"input_batch": [padded.rstrip("="), padded]}), InputType.BYTES)
    assert [decoded(InputType.BYTES, item).tobytes() for item in parsed.inputs] == [raw, raw]


@given(st.lists(st.lists(finite_doubles, min_size=3, max_size=3), min_size=2, max_size=10))
def test_input_batch_keeps_order(rows):
    parsed = parse_predict_body(body({"input_batch": rows}), InputType.DOUBLES)
    assert parsed.is_batch
    assert shape_batch(InputType.DOUBLES, parsed.inputs).tolist() == rows


def test_a_batch_is_one_writable_array_of_rows_as_the_model_gets_it():
    batch = shape_batch(InputType.DOUBLES, [struct.pack("<2d", 1.0, 2.0), struct.pack("<2d", 3.0, 4.0)])
    assert batch.shape == (2, 2) and batch.dtype == np.float64
    batch -= 1.0                                    # models may normalise their input in place
    assert batch.tolist() == [[0.0, 1.0], [2.0, 3.0]]
    assert shape_batch(InputType.INTS, [b"", b""]).shape == (2, 0)
    assert shape_batch(InputType.DOUBLES, []).shape == (0, 0)


def test_batch_of_one_is_answered_unwrapped():
    assert not parse_predict_body(body({"input_batch": [[1.0]]}), InputType.DOUBLES).is_batch


def test_ragged_batch_becomes_object_array():
    parsed = parse_predict_body(body({"input_batch": [[1.0], [1.0, 2.0]]}), InputType.DOUBLES)
    batch = shape_batch(InputType.DOUBLES, parsed.inputs)
    assert batch.dtype == object and [row.tolist() for row in batch] == [[1.0], [1.0, 2.0]]


@given(st.lists(st.one_of(finite_doubles, int32s), max_size=30), st.sampled_from(["", ', "version": "2"']))
def test_every_check_packs_the_same_bytes(values, extra):
    """With or without letters that may belong to a bool (the version string), the bytes
    are the same: the fast path (no such letter) and the full checks agree."""
    parsed = parse_predict_body(('{"input": %s%s}' % (json.dumps(values), extra)).encode(), InputType.DOUBLES)
    assert parsed.inputs[0] == struct.pack("<%dd" % len(values), *values)


def test_integers_are_accepted_as_doubles():
    parsed = parse_predict_body(b'{"input": [1, 2.5]}', InputType.DOUBLES)
    assert parsed.inputs[0] == struct.pack("<2d", 1.0, 2.5)


def test_version_is_read_as_a_string():
    assert parse_predict_body(b'{"input": [1.0], "version": 2}', InputType.DOUBLES).version == "2"
    assert parse_predict_body(b'{"input": [1.0], "version": "v2"}', InputType.DOUBLES).version == "v2"


@pytest.mark.parametrize("value, in_range", [("3.4028235e38", True), ("-3.4028235e38", True),
                                             ("3.4028236e38", False), ("1e39", False)])
def test_the_float32_range_does_not_depend_on_the_rest_of_the_body(value, in_range):
    """A value that rounds to the largest float32 was taken, unless the body also held an r
    or an f anywhere (another key, a version), which sent it to a stricter check."""
    for raw in (b'{"input": [%s]}' % value.encode(), b'{"input": [%s], "version": "1", "ref": 0}' % value.encode()):
        if in_range:
            assert len(parse_predict_body(raw, InputType.FLOATS).inputs[0]) == 4
        else:
            with pytest.raises(InputError, match="outside the float32 range"):
                parse_predict_body(raw, InputType.FLOATS)


@pytest.mark.parametrize("raw, input_type, complaint", [
    (b"{not json", InputType.DOUBLES, "not valid JSON"),
    (b"[1.0]", InputType.DOUBLES, "must be a JSON object"),
    (b'{"inputs": [1.0]}', InputType.DOUBLES, "required keys input or input_batch"),
    (b'{"input": "abc"}', InputType.DOUBLES, "expected type Array but found type String"),
    (b'{"input": [1.0, "x"]}', InputType.DOUBLES, "of type String is not of type double"),
    (b'{"input": [true]}', InputType.DOUBLES, "of type True is not of type double"),
    (b'{"input": [1, 2, false]}', InputType.INTS, "of type False is not of type int"),
    (b'{"input": [1.0, null]}', InputType.FLOATS, "of type Null is not of type float"),
    (b'{"input": [1.0, [2.0]]}', InputType.DOUBLES, "of type Array is not of type double"),
    (b'{"input": [1.0, {"a": 1}]}', InputType.DOUBLES, "of type Object is not of type double"),
    (b'{"input": [1, -2147483649]}', InputType.INTS, "outside the int32 range"),
    (b'{"input": [1, 1e39]}', InputType.FLOATS, "float32 range"),
    (b'{"input": [1.5]}', InputType.INTS, "not of type int"),
    (b'{"input": [4294967296]}', InputType.INTS, "outside the int32 range"),
    (b'{"input": [1e39]}', InputType.FLOATS, "float32 range"),
    (b'{"input": [NaN]}', InputType.DOUBLES, "not valid JSON"),
    (b'{"input": [Infinity]}', InputType.DOUBLES, "not valid JSON"),
    (b'{"input": [1.0]}', InputType.STRINGS, "expected type String but found type Array"),
    (b'{"input": "@@@"}', InputType.BYTES, "base64"),
    (b'{"input": "QUJD-_"}', InputType.BYTES, "the standard alphabet"),     # base64url's
    (b'{"input": "QUJDR"}', InputType.BYTES, "base64"),                    # no padding makes 5 of 4
    # Clipper's texts (json_util.cpp): a batch's element is "Array input" too.
    (b'{"input_batch": [1.0]}', InputType.DOUBLES, "Array input of type Number is not of type array"),
    (b'{"input_batch": ["a", 1]}', InputType.STRINGS, "Array input of type Number is not of type string"),
    (b'{"input_batch": ["QQ==", 1]}', InputType.BYTES,
     "PredictionData of type Number is not of type base64-encoded string"),
    (b'{"input_batch": [[1], [0.5]]}', InputType.INTS, "Array input of type Number is not of type int (0.5"),
    (b'{"input": [3.5e38]}', InputType.FLOATS, "Array input of type Number is not of type float ("),
    (b'{"input": [2147483648]}', InputType.INTS, "Array input of type Number is not of type int ("),
    (b'{"input_batch": {"a": 1}}', InputType.DOUBLES, "input_batch expected type Array"),
    (b'{"input": [1.0], "version": [1]}', InputType.DOUBLES, "version expected type String"),
    (b'{"input": [1.0], "version": null}', InputType.DOUBLES,
     "Type mismatch! JSON key version expected type String but found type Null"),
    (b'{"version": null, "input": [1.0]}', InputType.INTS, "JSON key version expected type String"),
])
def test_bad_bodies_name_the_problem_and_the_schema(raw, input_type, complaint):
    with pytest.raises(InputError) as raised:
        parse_predict_body(raw, input_type)
    assert complaint in str(raised.value)
    assert '"input" := [double] | [int] | [string] | [byte] | [float]' in str(raised.value)


@pytest.mark.parametrize("output, embedded", [
    (b"0.5", b"0.5"), (b"[1,2]", b"[1,2]"), (b"cat", b'"cat"'), (b'"cat"', b'"cat"'),
    (b"NaN", b'"NaN"'), (b"", b'""'), (b"[1 2 3]", b'"[1 2 3]"'), (b"{'a': 1}", b"\"{'a': 1}\""),
])
def test_outputs_are_embedded_as_json_when_they_parse(output, embedded):
    assert responses.sniff_output(output) == embedded


def test_prediction_body_is_clippers():
    assert responses.prediction(0, b"4.5", False) == b'{"query_id":0,"output":4.5,"default":false}'
    assert responses.prediction(3, b"-1.0", True, responses.SLO_MISSED) == (
        b'{"query_id":3,"output":-1.0,"default":true,"default_explanation":'
        b'"Failed to retrieve a prediction response within the specified latency SLO"}')


# ---- the fast path for a flat list of doubles (simdjson) gives the general path's answers ----

def outcome(parse, raw: bytes):
    """What a client gets: the parsed request, or the error's status and message."""
    try:
        return parse(raw, InputType.DOUBLES, None)
    except InputError as error:
        return error.status, error.message


def test_flat_doubles_take_the_fast_path():
    for raw in (b'{"input": [1.5, 2, -0.0, 1e300]}', b' {"version": "v2", "input": []} ',
                b'{"input":[3],"version":7,"other":{"a":"b"}}'):
        fast = _parse_flat_doubles(raw)
        assert fast is not None and fast == _parse_document(raw, InputType.DOUBLES, None)


@pytest.mark.parametrize("raw", [
    b'{"input": [1], "input": [2]}',                 # orjson keeps the last
    b'{"input": [1], "\\u0069nput": [2]}',           # the same key, escaped
    b'{"version": "a", "input": [1], "version": "b"}',
    b'{"input": [[1], 2]}',                          # simdjson's as_buffer would flatten it
    b'{"input": [1, [2, 3]]}',
    b'\xef\xbb\xbf{"input": [1]}',                   # a byte-order mark: orjson refuses it
    b'{"input": [1, true]}', b'{"input": [false]}', b'{"input": [null]}', b'{"input": [{"a": 1}]}',
    b'{"input": ["1"]}', b'{"input": "1"}', b'{"input": {"a": [1]}}', b'{"input": 1}', b'[{"input": [1]}]',
    b'{"input": [1e400]}', b'{"input": [-1e400]}', b'{"input": [NaN]}', b'{"input": [Infinity]}',
    b'{"input": [1e-400, 4.9e-324, 99999999999999999999999, 18446744073709551615, -9223372036854775809]}',
    b'{"input": [01]}', b'{"input": [1.]}', b'{"input": [.5]}', b'{"input": [1,]}', b'{"input": [1]} x',
    b'{"input": [1]}\x00', b'{"input": [1], "version": 1.5}', b'{"input": [1], "version": true}',
    b'{"input": [1], "version": null}', b'{"input": [1], "version": ["a"]}', b'{"input": [1], "k": "\xff"}',
    b'{"input_batch": [[1], [2]]}', b'{"input_batch": [1], "input": [2]}', b'{}', b'',
])
def test_fast_path_answers_as_the_general_path(raw):
    assert outcome(parse_predict_body, raw) == outcome(_parse_document, raw)


@pytest.mark.parametrize("raw", [
    b'{"input": [-0]}', b'{"input": [-0e0, 0e0, -0.0]}', b'{"version": -0, "input": [1]}',
    b'{"input": [9007199254740993, 9223372036854775807, 9223372036854775808, 18446744073709551615]}',
    b'{"input": [18446744073709551616]}', b'{"input": [-9223372036854775808]}',
    b'{"input": [1], "version": 18446744073709551615}', b'{"input": [1], "version": 99999999999999999999}',
    b'{"input": [1.7976931348623157e308, 1.7976931348623159e308]}', b'{"input": [2.4703282292062328e-324]}',
    b'{"input": [1' + b'0' * 400 + b'e-400, 0.' + b'0' * 400 + b'1]}', b'{"input": [1e0000000000000000000000001]}',
    b'{"input": [1], "k": "\x01"}', b'{"input": [1], "k\x1f": 1}', b'{"input": [1], "k": "a\x00b"}',
    b'\x0c{"input": [1]}', b'{"input": [1]}\x0b', b'{"input":\xc2\xa0[1]}', b'{"input": [1]}\n\x00',
    b'{"input": [1], "k": "\xed\xa0\x80"}', b'{"input": [1], "k": "\xc0\xaf"}', b'{"input": [1], "\xf4\x90\x80\x80": 1}',
    b'{"input": [1], "k": "\xef\xbf\xbf"}', b'{"input": [1]}{}', b'{"input": [1]}\r\n\t ',
    b'{"input": [1], "version": "\xe2\x82\xac"}', b'{"input": [1], "input_batch": {}}',
])
def test_fast_path_answers_as_the_general_path_on_edge_numbers_and_bytes(raw):
    assert outcome(parse_predict_body, raw) == outcome(_parse_document, raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | finite_doubles | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8)


@given(st.lists(st.integers(-(2 ** 70), 2 ** 70) | finite_doubles | st.booleans() | st.none(), max_size=20),
       st.dictionaries(st.sampled_from(["version", "x", "input_batch"]), json_values, max_size=2),
       st.sampled_from([(",", ":"), (", ", ": ")]))
def test_fast_path_matches_general_path_on_any_document(values, extra, separators):
    raw = json.dumps({**extra, "input": values}, separators=separators).encode()
    assert outcome(parse_predict_body, raw) == outcome(_parse_document, raw)


def test_a_body_past_the_fast_paths_bound_is_read_by_the_general_path():
    """The simdjson parser keeps the buffers of the largest body it read: it reads none past
    FLAT_PATH_MAX_BYTES, and those are answered as before."""
    def flat(count):
        return ('{"input": [' + ",".join("%.17g" % (i / 7) for i in range(count)) + "]}").encode()
    small, large = flat(100), flat(70_000)
    assert len(large) > FLAT_PATH_MAX_BYTES > len(small)
    assert _parse_flat_doubles(small) is not None and _parse_flat_doubles(large) is None
    assert parse_predict_body(large, InputType.DOUBLES) == _parse_document(large, InputType.DOUBLES, None)
    assert np.frombuffer(parse_predict_body(large, InputType.DOUBLES).inputs[0])[-1] == 69_999 / 7
    at_the_bound = small[:-2] + b" " * (FLAT_PATH_MAX_BYTES - len(small)) + b"]}"
    assert len(at_the_bound) == FLAT_PATH_MAX_BYTES
    fast = _parse_flat_doubles(at_the_bound)
    assert fast is not None and fast == _parse_document(at_the_bound, InputType.DOUBLES, None)


def test_bodies_the_fast_path_refuses_leave_its_parser_reusable():
    """pysimdjson refuses to parse while a proxy of its last document lives: a refusal
    that kept one (in a local, a traceback) would send every later body the slow way."""
    refused_after_parsing = [b'{"input": [1, true]}', b'{"input": [1, "a"]}', b'{"input": [{"a": 1}]}',
                             b'{"input": {"a": 1}}', b'{"input": [1], "version": {"a": [2]}}',
                             b'{"input": [1], "version": 1.5}', b'{"x": {"y": 1}}', b'[1, 2]', b'{"input": [1e400]}',
                             b'{"input": [1,', b'{"input": [99999999999999999999999]}', b'"input"']
    for raw in refused_after_parsing:
        assert _parse_flat_doubles(raw) is None
        assert _parse_flat_doubles(b'{"input": [0.5]}') == ([np.float64(0.5).tobytes()], False, None), raw


def test_valid_inputs_do_not_pay_for_the_error_text(monkeypatch):
    """The type's name is for error messages: computed for each valid input, it made a batch
    of 10,000 strings 40% slower to parse."""
    calls = []
    real = inputs_module.json_type_name
    monkeypatch.setattr(inputs_module, "json_type_name", lambda value: calls.append(1) or real(value))
    for input_type, item in ((InputType.STRINGS, b'"ab"'), (InputType.INTS, b"[1, 2]"),
                             (InputType.DOUBLES, b"[1.5, true]")):
        body = b'{"input_batch": [' + b",".join([item] * 100) + b"]}"
        try:
            parse_predict_body(body, input_type, 10_000)
        except InputError:
            pass
    assert len(calls) <= 1          # the bool's, for the one error
