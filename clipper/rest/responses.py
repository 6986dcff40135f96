"""Response bodies of the query frontend, byte for byte as Clipper writes them (pure)."""
from typing import Optional, Sequence

import orjson

NO_CONNECTED_MODELS = "No connected models found for query"
SLO_MISSED = "Failed to retrieve a prediction response within the specified latency SLO"
# Ours: Clipper's model containers died instead (MODEL_FAILED), or it said SLO_MISSED.
MODEL_FAILED = "The model raised an error for this input (cause says which)"
QUEUE_FULL = ("The model's queue is full: as many inputs as the cluster's max_queued_inputs wait for "
              "its replicas (add replicas, or send fewer at once)")
REPLICA_LOST = ("A replica of the model was lost while computing this prediction (it exited or fell "
                "silent; its log says why)")


def sniff_output(text: bytes) -> bytes:
    """Clipper embeds an output that parses as JSON as that JSON, anything else as a string
    (also JSON nested deeper than orjson writes: it reads 1,024 levels, writes 254)."""
    try:
        return orjson.dumps(orjson.loads(text))
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return orjson.dumps(text.decode("utf-8", "replace"))


def prediction(query_id: int, output_json: bytes, is_default: bool,
               explanation: Optional[str] = None) -> bytes:
    """One prediction object; keys in Clipper's order, compact."""
    body = b'{"query_id":%d,"output":%s,"default":%s' % (
        query_id, output_json, b"true" if is_default else b"false")
    if is_default and explanation:
        body += b',"default_explanation":' + orjson.dumps(explanation)
    return body + b"}"


def model_error(query_id: int, default_output_json: bytes, cause: str) -> bytes:
    """Our addition: a model that raised is reported, not silently replaced by the default.
    The object is still one of Clipper's predictions (the app's default output), so that a
    client reading ``output`` and ``default`` of each element of a batch still can."""
    return prediction(query_id, default_output_json, True, MODEL_FAILED)[:-1] + (
        b',"error":"Model error","cause":%s}' % orjson.dumps(cause))


def batch(predictions: Sequence[bytes]) -> bytes:
    return b'{"batch_predictions":[' + b",".join(predictions) + b"]}"


def error(kind: str, cause: str) -> bytes:
    """Clipper's error body for /predict: {"error": ..., "cause": ...}."""
    return orjson.dumps({"error": kind, "cause": cause})
