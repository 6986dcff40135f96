"""Clipper's hello world, continuously: predict on 200 random doubles until Ctrl-C.

Same set-up as basicQuerySimplified.py. Ctrl-C (or kill, or closing the terminal) stops the
cluster and exits cleanly, at any moment; any other failure also stops the cluster before
the script exits with an error.
"""
from clipper_admin.interrupts import exit_cleanly_on_signals

# Before anything else, so that even a Ctrl-C during the imports below stops cleanly.
exit_cleanly_on_signals()

from datetime import datetime
import json
import time

import numpy as np
import requests

from clipper_admin import ClipperConnection, backend_from_args
from clipper_admin.deployers import python as python_deployer


def feature_sum(xs):
    # Called once per batch: xs holds one input vector per row.
    return [str(sum(x)) for x in xs]


# One HTTP session for all predictions: its connection is reused from one to the next.
session = requests.Session()


def predict(addr, x):
    url = "http://%s/hello-world/predict" % addr
    req_json = json.dumps({'input': list(x)})
    headers = {'Content-type': 'application/json'}
    start = datetime.now()
    r = session.post(url, headers=headers, data=req_json)
    end = datetime.now()
    latency = (end - start).total_seconds() * 1000.0
    print("'%s', %f ms" % (r.text, latency), flush=True)


if __name__ == '__main__':
    clipper_conn = ClipperConnection(backend_from_args(description=__doc__))
    clipper_conn.start_clipper()
    try:
        clipper_conn.register_application(
            name="hello-world", input_type="doubles", default_output="-1.0", slo_micros=100000)
        python_deployer.deploy_python_closure(
            clipper_conn, name="sum-model", version=1, input_type="doubles", func=feature_sum)
        clipper_conn.link_model_to_app(app_name="hello-world", model_name="sum-model")
        print("Predicting until Ctrl-C", flush=True)
        while True:
            predict(clipper_conn.get_query_addr(), np.random.random(200))
            time.sleep(0.2)
    finally:
        clipper_conn.stop_all()
