"""What every framework test checks: single and batch queries over REST give the
framework's own outputs for the same inputs."""
import numpy as np
import requests

SLO_MICROS = 20_000_000    # a first batch may wait for a framework to warm up


def predict(conn, app, payload):
    response = requests.post(f"http://{conn.get_query_addr()}/{app}/predict", json=payload,
                             timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def outputs_over_rest(conn, app, inputs):
    """The answers to ``inputs[0]`` as one query, then to all of them as one batch query."""
    single = predict(conn, app, {"input": inputs[0]})
    assert not single["default"], single
    batch = predict(conn, app, {"input_batch": inputs})["batch_predictions"]
    assert not any(answer["default"] for answer in batch), batch
    return [single["output"]] + [answer["output"] for answer in batch]


def assert_serves(conn, app, inputs, expected, atol=1e-5):
    """``expected[i]`` is the framework's own output for ``inputs[i]``."""
    answers = outputs_over_rest(conn, app, inputs)
    wanted = [expected[0]] + list(expected)
    assert len(answers) == len(wanted)
    for answer, want in zip(answers, wanted):
        np.testing.assert_allclose(np.asarray(answer, dtype=float), np.asarray(want, dtype=float),
                                   rtol=1e-4, atol=atol)
