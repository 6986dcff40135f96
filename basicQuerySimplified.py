"""Clipper's hello world: serve a Python function and ask it for one prediction.

Starts a cluster, registers the application "hello-world", deploys the function
feature_sum as the model "sum-model", links the two, sends one REST query and stops
everything. Runs on local processes by default; add --backend docker for Docker.
"""
from datetime import datetime
import json

import numpy as np
import requests

from clipper_admin import ClipperConnection, backend_from_args
from clipper_admin.deployers import python as python_deployer


def feature_sum(xs):
    # Called once per batch: xs holds one input vector per row.
    return [str(sum(x)) for x in xs]


def predict(addr, x):
    url = "http://%s/hello-world/predict" % addr
    req_json = json.dumps({'input': list(x)})
    headers = {'Content-type': 'application/json'}
    start = datetime.now()
    r = requests.post(url, headers=headers, data=req_json)
    end = datetime.now()
    latency = (end - start).total_seconds() * 1000.0
    print("'%s', %f ms" % (r.text, latency))


if __name__ == '__main__':
    clipper_conn = ClipperConnection(backend_from_args(description=__doc__))
    clipper_conn.start_clipper()
    try:
        # An application is the REST endpoint; queries past the 100 ms objective get "-1.0".
        clipper_conn.register_application(
            name="hello-world", input_type="doubles", default_output="-1.0", slo_micros=100000)
        python_deployer.deploy_python_closure(
            clipper_conn, name="sum-model", version=1, input_type="doubles", func=feature_sum)
        clipper_conn.link_model_to_app(app_name="hello-world", model_name="sum-model")
        predict(clipper_conn.get_query_addr(), np.random.random(10))
    finally:
        clipper_conn.stop_all()
