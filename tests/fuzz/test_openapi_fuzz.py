"""Both REST APIs fuzzed from their OpenAPI descriptions (schemathesis + hypothesis).

Every operation gets schema-valid and schema-invalid requests against a real cluster whose
application is linked to a deployed model. Nothing may answer 5xx or off its description,
invalid requests must be refused with a 4xx, no process may die, and good traffic must be
as fast afterwards as before.
"""
import asyncio
import json
import statistics
import time

import aiohttp
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (content_type_conformance, negative_data_rejection, not_a_server_error,
                                 response_schema_conformance, status_code_conformance)

from clipper import openapi
from clipper.cluster.registry import ProcessRecord
from clipper.config import Config
from clipper.management.server import ManagementAPI
from clipper.query_frontend.server import QueryFrontend
from clipper.store import Store
from clipper_admin.deployers import python as python_deployer
from conftest import local_cluster

PORTS = dict(query_port=51337, management_port=51338, rpc_port=57000, metric_port=51390)
# Per operation and generation mode: 19 operations with a body x 2 modes x 150 > 5,000 requests.
EXAMPLES = 150
# Whether a schema-valid request is accepted depends on the cluster's state (the app's input
# type, which models exist), so schemathesis' positive_data_acceptance check does not apply.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection]


def total(xs):
    return [str(sum(x)) for x in xs]


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(name="fuzz", **PORTS) as conn:
        python_deployer.create_endpoint(conn, "fuzz-app", "doubles", total, slo_micros=1_000_000)
        yield conn


def fuzz(operation, mode, base_url, path_parameters):
    """Run hypothesis over one operation; return how many requests were sent."""
    sent = []
    session = requests.Session()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
    def run(case):
        sent.append(1)
        case.call_and_validate(base_url=base_url, session=session, checks=CHECKS, timeout=10)

    run()
    return len(sent)


def median_latency(url, count=200):
    async def measure():
        latencies = []
        async with aiohttp.ClientSession() as session:
            for i in range(count):
                started = time.perf_counter()
                async with session.post(url, json={"input": [float(i), 0.5]}) as response:
                    assert response.status == 200 and (await response.json())["default"] is False
                latencies.append(time.perf_counter() - started)
        return statistics.median(latencies)
    return asyncio.run(measure())


def test_served_descriptions_are_the_files_in_the_repo(cluster):
    for api, addr in (("query", cluster.get_query_addr()), ("management", cluster.cm.get_admin_addr())):
        response = requests.get(f"http://{addr}/openapi.json", timeout=5)
        assert response.status_code == 200 and response.content == openapi.document(api)


def test_every_route_is_described():
    async def served_routes():
        query_frontend = QueryFrontend(Config())
        try:
            return {"query": query_frontend.routes(),
                    "management": ManagementAPI(Store(Config().redis_url), Config()).routes()}
        finally:
            query_frontend.rpc.socket.close(0)
            query_frontend.rpc.context.term()
    for api, routes in asyncio.run(served_routes()).items():
        described = {(method.upper(), path)
                     for path, item in json.loads(openapi.document(api))["paths"].items() for method in item}
        served = {(route.method, route.path.rstrip("/")) for route in routes}
        assert served == described, f"{api}: served but not described {served - described}, " \
                                    f"described but not served {described - served}"


def test_fuzzing_both_apis_breaks_nothing(cluster, record_property):
    processes = [ProcessRecord(p["pid"], p["create_time"]) for p in cluster.cm.cluster.processes()]
    predict_url = f"http://{cluster.get_query_addr()}/fuzz-app/predict"
    before = median_latency(predict_url)
    sent, started = {}, time.monotonic()
    for api, addr in (("query", cluster.get_query_addr()), ("management", cluster.cm.get_admin_addr())):
        schema = schemathesis.openapi.from_dict(json.loads(openapi.document(api)))
        for result in schema.get_all_operations():
            operation = result.ok()
            parameters = {"app": "fuzz-app"} if "{app}" in operation.path else None
            modes = [GenerationMode.POSITIVE]
            if operation.body:       # nothing to get wrong in a GET without parameters
                modes.append(GenerationMode.NEGATIVE)
            for mode in modes:
                sent[api] = sent.get(api, 0) + fuzz(operation, mode, f"http://{addr}", parameters)
    elapsed = time.monotonic() - started
    after = median_latency(predict_url)
    print(f"fuzzed {sent} requests in {elapsed:.0f} s; good predictions: median "
          f"{before * 1e3:.2f} ms before, {after * 1e3:.2f} ms after")
    record_property("fuzz_requests", sent)
    assert sum(sent.values()) >= 5_000
    assert all(process.alive() for process in processes), "a cluster process died or restarted"
    # Correctness, not a timing target: a leak or a wedged queue shows up as many times slower.
    assert after < 3 * before + 0.002, (before, after)
