"""Validation of /admin request bodies, with Clipper's error texts (pure)."""

import orjson

from clipper.datatypes import InputType
from clipper.errors import RequestError
from clipper.redis_schema import GROUP_SEPARATORS, is_safe_name
from clipper.rest.inputs import json_type_name, type_mismatch

# Schema texts quoted in error messages, as Clipper's management frontend prints them.
APP_SCHEMA = """
  {
  "name" := string,
  "input_type" := "integers" | "bytes" | "floats" | "doubles" | "strings",
  "default_output" := string,
  "latency_slo_micros" := int
  }
"""
LINKS_SCHEMA = """
  {
  "app_name" := string,
  "model_names" := [string]
  }
"""
APP_NAME_SCHEMA = """
  {
  "app_name" := string
  }
"""
NAME_SCHEMA = """
  {
  "name" := string
  }
"""
VERBOSE_SCHEMA = """
  {
  "verbose" := bool
  }
"""
MODEL_SCHEMA = """
  {
  "model_name" := string,
  "model_version" := string,
  "labels" := [string],
  "input_type" := "integers" | "bytes" | "floats" | "doubles" | "strings",
  "container_name" := string,
  "model_data_path" := string,
  "batch_size" := int
  }
"""
VERSIONED_MODEL_SCHEMA = """
  {
  "model_name" := string,
  "model_version" := string,
  }
"""
CONTAINER_SCHEMA = """
  {
  "model_name" := string,
  "model_version" := string,
  "replica_id" := int
  }
"""
STATE_SCHEMA = """
  {
  "app_name" := string,
  "uid" := int,
  }
"""

# Longest application name, model name, version or label. An app name must fit in the
# predict URL's request line (8,190 bytes for aiohttp); a version becomes a Docker image
# tag in the Docker backend (at most 128 characters).
MAX_NAME_LENGTH = 128
# An application's default output is kept in Redis and in every query frontend, and sent
# with each default answer; an image name or a path, at most a path's length.
MAX_DEFAULT_OUTPUT_LENGTH = 64 * 1024
MAX_PATH_LENGTH = 4096
MAX_LABELS = 64         # of one model version: the query frontends keep them too
_INT32_MIN, _INT32_MAX = -(2 ** 31), 2 ** 31 - 1
# The type each getter of Clipper's json_util.cpp names when a key has another type: get_int
# checks for a JSON number first ("Number"), then for an int32.
_TYPE_NAMES = {str: "String", list: "Array", bool: "bool", int: "Number"}


def _has_kind(value, kind: type) -> bool:
    """Whether a JSON value is of the kind a getter reads. true is no int; an int is any JSON
    number at first (integer() then refuses what is not an int32, as get_int does)."""
    if kind is bool:
        return type(value) is bool
    if kind is int:
        return type(value) in (int, float)
    return isinstance(value, kind)


class Body:
    """A decoded JSON object, read field by field against one schema."""

    def __init__(self, raw: bytes, schema: str):
        self.schema = schema
        try:
            self.document = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            raise self.error(f"body is not valid JSON ({error})") from None
        if not isinstance(self.document, dict):
            raise self.error("Can only get key-value pair from an object "
                             f"(the body is {json_type_name(self.document)})")

    def error(self, message: str) -> RequestError:
        return RequestError(f"Error parsing JSON: {message}. Expected JSON schema: {self.schema}")

    def _get(self, key: str, kind: type):
        if key not in self.document:
            raise self.error(f"JSON object does not have required key: {key}")
        value = self.document[key]
        if not _has_kind(value, kind):
            raise self.error(type_mismatch(key, _TYPE_NAMES[kind], value))
        return value

    def string(self, key: str) -> str:
        return self._get(key, str)

    def boolean(self, key: str) -> bool:
        return self._get(key, bool)

    def integer(self, key: str) -> int:
        value = self._get(key, int)
        if type(value) is float:
            raise self.error("PredictionData of type Number is not of type int "
                             f"({key} {value!r}: write integers without a decimal point)")
        if not _INT32_MIN <= value <= _INT32_MAX:
            raise self.error("PredictionData of type Number is not of type int "
                             f"({key} {value} does not fit in a 32-bit integer)")
        return value

    def strings(self, key: str) -> list:
        values = self._get(key, list)
        for value in values:
            if not isinstance(value, str):
                raise self.error(f"Array input of type {json_type_name(value)} is not of type string ({key})")
        return values

    def input_type(self, key: str = "input_type") -> InputType:
        try:
            return InputType.parse(self.string(key))
        except ValueError as error:  # Clipper wrote no response at all here
            raise RequestError(str(error)) from None

    def app_name(self, key: str) -> str:
        name = self.string(key)
        check_length(name, "application name")
        if not is_safe_name(name):       # it becomes a URL path segment: nothing to escape
            raise RequestError(
                f"Invalid application name {name!r}: use letters, digits, '-', '_' and '.', "
                "starting with a letter or digit")
        return name


def check_length(value: str, what: str, limit: int = MAX_NAME_LENGTH) -> None:
    if len(value) > limit:
        raise RequestError(f"The {what} is {len(value)} characters long; the limit is "
                           f"{limit} characters")


def check_group_string(value: str, what: str, may_be_empty: bool = False) -> None:
    """A model name, version or label: used inside Redis keys and lists, so no ',' or ':'.
    Labels may be empty, as in Clipper, whose get_model lists a model without labels as [""]."""
    check_length(value, what)
    if not value and not may_be_empty:
        raise RequestError(f"Invalid {what} supplied: it is empty")
    if any(separator in value for separator in GROUP_SEPARATORS):
        raise RequestError(f"Invalid {what} supplied: {value}. Contains one of: ',', ':'")


def check_model_name(value: str, what: str) -> None:
    """A model name or version: Clipper's rule (check_group_string), then no character that
    could make it a path, a control character or a space where it names files and processes."""
    check_group_string(value, what)
    if not is_safe_name(value):
        raise RequestError(f"Invalid {what} supplied: {value!r}. Use letters, digits, '-', '_' "
                           "and '.', starting with a letter or digit (to deploy it with "
                           "clipper_admin: a DNS-1123 label, such as my-model)")
