"""Both REST APIs fuzzed from their OpenAPI descriptions (schemathesis + hypothesis).

Every operation gets schema-valid and schema-invalid requests against a real cluster whose
application is linked to a deployed model. Nothing may answer 5xx or off its description,
invalid requests must be refused with a 4xx, no process may die, and good traffic must be
as fast afterwards as before.
"""
import asyncio
import collections
import dataclasses
import json
import statistics
import time

import aiohttp
import jsonschema
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
# Imported from where every schemathesis 4.x defines them (Python 3.9 gets 4.4, 3.11+ the newest).
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                               response_schema_conformance, status_code_conformance)

from clipper import openapi
from clipper.cluster.registry import ProcessRecord
from clipper.config import Config
from clipper.management import server as management_server
from clipper.query_frontend import server as query_server
from clipper_admin.deployers import python as python_deployer
from conftest import local_cluster

PORTS = dict(query_port=51337, management_port=51338, rpc_port=57000, metric_port=51390)
APP = "fuzz-app"
# Examples per operation and kind of request; predictions to the linked app, what users send
# most, get the most. In all, over 5,000 requests.
EXAMPLES, PREDICTION_EXAMPLES, OTHER_APP_EXAMPLES = 150, 600, 50
# Whether a schema-valid request is accepted depends on the cluster's state (the app's input
# type, which models exist), so schemathesis' positive_data_acceptance check does not apply.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection]


def total(xs):
    return [str(sum(x)) for x in xs]


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(name="fuzz", **PORTS) as conn:
        python_deployer.create_endpoint(conn, APP, "doubles", total, slo_micros=1_000_000)
        yield conn


def answered_by_model(operation, response) -> int:
    """How many predictions in a response came from the model (not a default output)."""
    if operation.path != "/{app}/predict" or response.status_code != 200:
        return 0
    document = response.json()
    return sum(p.get("default") is False for p in document.get("batch_predictions", [document]))


@dataclasses.dataclass
class Tally:
    statuses: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    by_model: int = 0      # predictions answered by the model, not by a default output

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def __str__(self):
        return ", ".join(f"{n:,} x {status}" for status, n in sorted(self.statuses.items()))


def fuzz(operation, mode, path_parameters, examples, base_url, tally: Tally):
    """Run hypothesis over one operation, counting its answers into ``tally``."""
    session = requests.Session()

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
    def run(case):
        response = case.call_and_validate(base_url=base_url, session=session, checks=CHECKS, timeout=10)
        tally.statuses[response.status_code] += 1
        tally.by_model += answered_by_model(operation, response)

    run()


def runs_for(operation):
    """(generation mode, fixed path parameters, examples) of each run over one operation."""
    if "{app}" not in operation.path:
        # A GET without parameters has nothing to get wrong: no negative run.
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if operation.body else [])
        return [(mode, None, EXAMPLES) for mode in modes]
    # Mostly the linked app, so that predictions reach the model; a few generated app names.
    examples = PREDICTION_EXAMPLES if operation.path == "/{app}/predict" else EXAMPLES
    return [(GenerationMode.POSITIVE, {"app": APP}, examples),
            (GenerationMode.NEGATIVE, {"app": APP}, examples),
            (GenerationMode.POSITIVE, None, OTHER_APP_EXAMPLES)]


def median_latency(url, first_input, count=200):
    """Median latency of ``count`` good predictions, each input new (no cache hit)."""
    async def measure():
        latencies = []
        async with aiohttp.ClientSession() as session:
            for i in range(first_input, first_input + count):
                started = time.perf_counter()
                async with session.post(url, json={"input": [float(i), 0.25]}) as response:
                    assert response.status == 200 and (await response.json())["default"] is False
                latencies.append(time.perf_counter() - started)
        return statistics.median(latencies)
    return asyncio.run(measure())


def test_served_descriptions_are_the_files_in_the_repo(cluster):
    for api, addr in (("query", cluster.get_query_addr()), ("management", cluster.cm.get_admin_addr())):
        response = requests.get(f"http://{addr}/openapi.json", timeout=5)
        assert response.status_code == 200 and response.content == openapi.document(api)


def routed(api):
    """(method, path) of every route a frontend serves (the management one: its aiohttp router,
    but the 404 catch-all; the query one: its route table)."""
    if api == "query":
        return {(method, path) for path, methods in query_server.ROUTES.items() for method in methods}

    async def routes():
        app = management_server.build_app(Config())
        return {(route.method, route.resource.canonical) for route in app.router.routes()}
    return {(method, path) for method, path in asyncio.run(routes()) if path != "/{tail}"}


@pytest.mark.parametrize("api", ["query", "management"])
def test_every_route_is_described(api):
    described = {(method.upper(), path)
                 for path, item in json.loads(openapi.document(api))["paths"].items() for method in item}
    served = routed(api)
    assert served == described, f"served, not described: {served - described}; " \
                                f"described, not served: {described - served}"


@pytest.mark.parametrize("operation", ["get_all_applications", "get_all_models", "get_all_containers"])
@pytest.mark.parametrize("verbose", [False, True])
def test_an_empty_list_is_described(operation, verbose):
    """A cluster without applications, models or replicas answers []: its description allows it."""
    document = json.loads(openapi.document("management"))
    answer = document["paths"][f"/admin/{operation}"]["post"]["responses"]["200"]
    jsonschema.validate([], answer["content"]["application/json"]["schema"])


def test_fuzzing_both_apis_breaks_nothing(cluster, record_property, capsys):
    processes = [ProcessRecord(p["pid"], p["create_time"]) for p in cluster.cm.cluster.processes()]
    predict_url = f"http://{cluster.get_query_addr()}/{APP}/predict"
    median_latency(predict_url, first_input=-1_000, count=50)     # warm-up
    before = median_latency(predict_url, first_input=0)
    tallies, started = {}, time.monotonic()
    for api, addr in (("query", cluster.get_query_addr()), ("management", cluster.cm.get_admin_addr())):
        tally = tallies[api] = Tally()
        schema = schemathesis.openapi.from_dict(json.loads(openapi.document(api)))
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode, path_parameters, examples in runs_for(operation):
                fuzz(operation, mode, path_parameters, examples, f"http://{addr}", tally)
    elapsed = time.monotonic() - started
    after = median_latency(predict_url, first_input=1_000)
    query, management = tallies["query"], tallies["management"]
    summary = (f"fuzzing: {query.requests:,} requests to the query API ({query}; {query.by_model:,} "
               f"predictions by the model), {management.requests:,} to the management API ({management}) "
               f"in {elapsed:.0f} s; good predictions, median {before * 1e3:.2f} ms before, "
               f"{after * 1e3:.2f} ms after")
    with capsys.disabled():            # the figures belong in every run's output
        print("\n" + summary)
    record_property("fuzz_summary", summary)
    assert query.requests + management.requests >= 5_000
    assert query.by_model > 100, "too few fuzzed predictions reached the model"
    assert all(process.alive() for process in processes), "a cluster process died or restarted"
    # Correctness, not a timing target: a leak or a wedged queue shows up as many times slower.
    assert after < 3 * before + 0.002, (before, after)
