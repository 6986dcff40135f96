"""A model container's side of Clipper's RPC: connect, register, serve batches, heartbeat.

It behaves as Clipper's Python container towards the query frontend (so it also works
with the original Clipper), with three differences: an exception in the model is reported
for the inputs it raised on (see ``codec.ERROR_OUTPUT_PREFIX``) and the container keeps
serving; an idle connection heartbeats every second, so a restarted frontend finds it
quickly; and it serves several query frontend workers at once, one connection each,
calling the model once on the batches of all of them that are waiting. A replica of the local backend sends the same
messages over a Unix socket instead of ZeroMQ (clipper.rpc.stream).
"""
import logging
import math
import os
import random
import signal
import socket
import sys
import time
import traceback
from typing import Callable, List, Optional, Sequence, Tuple

import zmq

from clipper import busy_poll
from clipper.container.metrics import REPLICA, ReplicaMetrics
from clipper.datatypes import InputType
from clipper.log_limit import LogRateLimit
from clipper.rpc import auth, codec, stream
from clipper.rpc.sockets import has_message, receive_frames, send_frames
from clipper.signal_wakeup import SignalWakeup

log = logging.getLogger("clipper.container")
# The model's failures: any client can make a model fail on every query, and a traceback per
# batch filled the log at 0.5 MB/s.
model_log = logging.getLogger("clipper.container.model")
model_log.addFilter(LogRateLimit(5, 10.0, "the model's failures"))

# An idle connection heartbeats this often, so a restarted frontend finds the replica quickly.
HEARTBEAT_SECONDS = 1.0
RECONNECT_MILLIS = 20
UNIX_SCHEME = "unix://"         # an address of a Unix socket link (StreamLink)
# With several workers, a batch that arrives waits this share of the last model call's time
# (at most MERGE_WAIT_MAX_SECONDS) for the next batches of the workers answered last: they
# come a moment after their answers, and would otherwise alternate with it, call by call.
MERGE_WAIT_SHARE = 0.1
MERGE_WAIT_MAX_SECONDS = 0.002
# The longest error text a client gets for a model's failure (the rest is in the log).
MAX_ERROR_CHARACTERS = 4000
# Without any message from the frontend for this long, start a new session (as Clipper does).
SESSION_TIMEOUT_SECONDS = 30.0
# What a model call may raise and the replica answers as the model's error. SystemExit too:
# a library that calls sys.exit() would otherwise end the replica (KeyboardInterrupt still
# stops it).
_MODEL_FAILURES = (Exception, SystemExit)
# Inputs of a failed batch run alone before a model that failed on every one of them is
# taken to fail on anything (the rest of the batch then gets its error without a run).
MAX_FAILED_ALONE = 3
# Its own generator: a model that seeds the random module keeps its sequence.
_RETRY_ORDER = random.Random()

Handler = Callable[[InputType, Sequence[bytes]], List[bytes]]


class _Session:
    """What the serving loop keeps of its connection to one query frontend worker, whatever
    carries it (Link, StreamLink)."""

    def __init__(self, address: str):
        self.address = address
        self.last_heard = self.last_sent = time.monotonic()
        self.answered = False     # answered a batch and has not sent one since

    def due(self) -> float:
        """When the serving loop must next look at this link: its next heartbeat."""
        return max(self.last_heard, self.last_sent) + HEARTBEAT_SECONDS


class Link(_Session):
    """The connection to one query frontend worker: a DEALER with a fresh identity. Its
    monitor tells when the connection is made, or made again (to a restarted frontend): the
    frontend then hears a heartbeat at once, and registers the replica before it serves."""
    broken = False      # ZeroMQ reconnects by itself

    def __init__(self, runtime: "ContainerRuntime", address: str):
        super().__init__(address)       # the first heartbeat goes when the connection is made
        self.socket = runtime.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        # Retry a lost connection soon: a restarted frontend waits for its replicas.
        self.socket.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MILLIS)
        if runtime.server_public_key:
            auth.present_curve(self.socket, runtime.server_public_key, runtime.secret_key)
        self.monitor = self.socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.socket.connect(address)

    @property
    def pollables(self) -> list:
        return [self.socket, self.monitor]

    def readable(self, ready) -> bool:
        return self.socket in ready

    def receive(self) -> List[List[bytes]]:
        """The messages waiting, as lists of frames."""
        messages = []
        while has_message(self.socket):
            messages.append(receive_frames(self.socket))
        return messages

    def send(self, frames, copy: bool = True) -> None:
        send_frames(self.socket, frames, copy=copy)
        self.last_sent = time.monotonic()

    def reconnected(self, ready) -> bool:
        """Whether the connection was made again since the last call."""
        made = False
        if self.monitor in ready:
            while has_message(self.monitor):
                receive_frames(self.monitor)
                made = True
        return made

    def close(self) -> None:
        self.socket.disable_monitor()
        self.monitor.close(0)
        self.socket.close(0)


class StreamLink(_Session):
    """The connection to one query frontend worker over its Unix socket (clipper.rpc.stream),
    with Link's interface. It heartbeats as soon as it connects, so that the frontend
    registers it; when the connection is lost (or cannot be made), the runtime replaces it
    with a new one after RECONNECT_MILLIS."""
    RECEIVE_BYTES = 1 << 18

    def __init__(self, runtime: "ContainerRuntime", address: str):
        super().__init__(address)
        self.path = address[len(UNIX_SCHEME):]
        self.reader = stream.MessageReader()
        self.lost_at = 0.0
        self.socket: Optional[socket.socket] = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.socket.settimeout(RECONNECT_MILLIS / 1000)
            self.socket.connect(self.path)
            self.socket.settimeout(None)
        except OSError:         # the frontend is not (yet, or no longer) there
            self._lose()
            return
        self.send(codec.encode_heartbeat())

    @property
    def broken(self) -> bool:
        return self.socket is None

    @property
    def pollables(self) -> list:
        return [] if self.socket is None else [self.socket]

    def readable(self, ready) -> bool:
        return self.socket is not None and self.socket.fileno() in ready

    def receive(self) -> List[List[bytes]]:
        messages = []
        while self.socket is not None:
            try:
                data = self.socket.recv(self.RECEIVE_BYTES, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                log.info("the connection to %s closed; reconnecting", self.address)
                self._lose()
                break
            try:
                messages += self.reader.feed(data)
            except stream.StreamError as error:
                log.error("the frontend at %s broke the RPC framing (%s); reconnecting", self.address, error)
                self._lose()
                break
            if len(data) < self.RECEIVE_BYTES:      # the kernel had no more a moment ago
                break
        return messages

    def send(self, frames, copy: bool = True) -> None:
        if self.socket is None:
            return
        try:
            self.socket.sendall(stream.encode(frames))
        except OSError:         # the frontend is gone: its batches go to other replicas
            self._lose()
            return
        self.last_sent = time.monotonic()

    def due(self) -> float:
        """When the serving loop must next look at this link: its next heartbeat, or once
        broken, the time to replace it."""
        if self.socket is None:
            return self.lost_at + RECONNECT_MILLIS / 1000
        return super().due()

    def reconnected(self, ready) -> bool:
        return False        # it heartbeats as it connects

    def _lose(self) -> None:
        self.close()
        self.lost_at = time.monotonic()

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
            self.socket = None


def make_link(runtime: "ContainerRuntime", address: str):
    return (StreamLink if address.startswith(UNIX_SCHEME) else Link)(runtime, address)


class ContainerRuntime:
    def __init__(self, model_name: str, model_version: str, input_type: InputType,
                 addresses: Sequence[str], handler: Handler, server_public_key: str = "",
                 secret_key: str = "", max_output_size: int = 0, metrics: Optional[ReplicaMetrics] = None,
                 busy_poll_seconds: float = 0.0):
        """``addresses``: the RPC address of every query frontend worker; the replica serves
        them all. With ``server_public_key`` (and this container's ``secret_key``), the
        connections are CURVE-authenticated, as the cluster's frontend requires (clipper.rpc.auth).
        ``max_output_size``: the frontend's limit on one output (0: none); a larger output is
        answered as an error, since the frontend would drop the connection that sent it.
        ``metrics``: where each model call is recorded (Clipper's clipper_mc_* metrics).
        ``busy_poll_seconds``: how long to poll for the next batch after answering one
        (clipper.busy_poll)."""
        self.model_name = model_name
        self.model_version = model_version
        self.input_type = input_type
        self.addresses = list(addresses)
        self.handler = handler
        self.server_public_key = server_public_key
        self.secret_key = secret_key
        self.max_output_size = max_output_size
        self.metrics = metrics
        self.busy_poll_seconds = busy_poll_seconds
        self._answered_at = 0.0              # busy_poll's clock
        self._receive_seconds = 0.0          # of this turn's requests: reading their frames
        self._parse_seconds = 0.0            # and decoding them
        self.context = zmq.Context()
        self._stopping = False
        self._last_call_seconds = 0.0
        self._wakeup: Optional[SignalWakeup] = None
        self._polled_sockets: list = []
        self._polled: Optional[zmq.Poller] = None

    def stop(self, *_args) -> None:
        self._stopping = True

    def serve_forever(self) -> None:
        # SIGTERM ends the wait for the next message at once (without the wake-up, the poll
        # ran to its timeout, up to a heartbeat interval, first); a batch in progress is
        # still answered.
        self._wakeup = SignalWakeup()
        signal.signal(signal.SIGTERM, self.stop)
        try:
            self.serve()
        finally:
            self._wakeup.close()

    def serve(self) -> None:
        """Serve until ``stop()``."""
        links = [make_link(self, address) for address in self.addresses]
        # The line Clipper's containers wrote, which its docs tell users to look for.
        log.info("Serving predictions for %s input type.", self.input_type.canonical_name)
        try:
            while not self._stopping:
                self._turn(links)
        finally:
            for link in links:
                link.close()
            self.context.term()
            if self.metrics is not None:
                self.metrics.remove()

    def _turn(self, links: List[Link]) -> None:
        """Wait for messages; answer every prediction request waiting on any link with one
        model call (so the batches of several workers make one batch); keep idle links alive."""
        poller = self._poller(links)
        wait = min(link.due() for link in links) - time.monotonic()
        ready = (busy_poll.poll_until(lambda: dict(poller.poll(0)), self._answered_at + self.busy_poll_seconds)
                 or _poll(poller, wait))
        self._receive_seconds = self._parse_seconds = 0.0
        if self._wakeup is not None and self._wakeup.fileno() in ready:
            self._wakeup.drain()            # a signal: the serving loop looks at _stopping
        requests = self._receive([link for link in links if link.readable(ready)])
        if requests and len(links) > 1:
            requests += self._wait_for_answered(links, requests)
        if requests:
            self._answer(requests)
            self._answered_at = busy_poll.now()
        now = time.monotonic()
        for index, link in enumerate(links):
            connected = link.reconnected(ready)
            if link.broken:
                if now >= link.due():
                    links[index] = make_link(self, link.address)
            elif now - link.last_heard > SESSION_TIMEOUT_SECONDS:
                log.info("no word from %s for %.0f s; reconnecting", link.address, SESSION_TIMEOUT_SECONDS)
                link.close()
                links[index] = make_link(self, link.address)
            elif connected or now >= link.due():
                link.send(codec.encode_heartbeat())
        if self.metrics is not None:
            self.metrics.write_if_due(now)

    def _poller(self, links: List[Link]) -> zmq.Poller:
        """The poller of these links' sockets (and of the signal wake-up), made again only
        when they changed (a link replaced, or its connection lost): making one every turn
        cost each batch a few microseconds."""
        pollables = [pollable for link in links for pollable in link.pollables]
        if self._polled is None or self._polled_sockets != pollables:
            poller = zmq.Poller()
            for pollable in pollables:
                poller.register(pollable, zmq.POLLIN)
            if self._wakeup is not None:
                poller.register(self._wakeup, zmq.POLLIN)
            self._polled_sockets, self._polled = pollables, poller
        return self._polled

    def _receive(self, links: List[Link]) -> List[Tuple[Link, codec.PredictionRequest]]:
        requests = []
        for link in links:
            link.last_heard = time.monotonic()
            for request in self._receive_waiting(link):
                link.answered = False
                requests.append((link, request))
        return requests

    def _wait_for_answered(self, links: List[Link], requests) -> List[Tuple[Link, codec.PredictionRequest]]:
        """The batches of the workers answered last that arrive within the merge wait."""
        have = {link for link, _ in requests}
        expected = [link for link in links if link.answered and link not in have and not link.broken]
        deadline = time.monotonic() + min(MERGE_WAIT_SHARE * self._last_call_seconds, MERGE_WAIT_MAX_SECONDS)
        more = []
        while expected and time.monotonic() < deadline:
            poller = zmq.Poller()
            for link in expected:
                poller.register(link.socket, zmq.POLLIN)
            ready = _poll(poller, deadline - time.monotonic())
            # Readable is not arrived: a Unix socket link may hold the first bytes of a
            # batch only, and a link the frontend's heartbeat reply.
            arrived = self._receive([link for link in expected if link.readable(ready)])
            more += arrived
            have.update(link for link, _ in arrived)
            expected = [link for link in expected if link not in have and not link.broken]
        for link in expected:      # nothing came: do not wait for it again until answered
            link.answered = False
        return more

    def _receive_waiting(self, link: Link) -> List[codec.PredictionRequest]:
        """Handle the control messages waiting on ``link``; return its prediction requests."""
        requests = []
        started = time.perf_counter()
        messages = link.receive()
        received = time.perf_counter()
        for frames in messages:
            try:
                message = codec.decode_clipper_message(frames)
            except codec.ProtocolError as error:
                log.error("ignoring a malformed message from the frontend: %s", error)
                continue
            if not isinstance(message, codec.HeartbeatReply):
                requests.append(message)
            elif message.heartbeat_type == codec.HEARTBEAT_REQUEST_METADATA:
                link.send(codec.encode_new_container(self.model_name, self.model_version, self.input_type))
                log.info("registered %s:%s with %s", self.model_name, self.model_version, link.address)
        self._receive_seconds += received - started
        self._parse_seconds += time.perf_counter() - received
        return requests

    def _answer(self, requests: List[Tuple[Link, codec.PredictionRequest]]) -> None:
        served = [(link, r) for link, r in requests if r.input_type == self.input_type]
        for link, request in requests:
            if request.input_type != self.input_type:
                link.send(codec.encode_prediction_response(request.msg_id, _errors(
                    len(request.inputs), f"this container takes {self.input_type.canonical_name}, "
                    f"got {request.input_type.canonical_name}")), copy=False)
        if not served:
            return
        started = time.perf_counter()
        outputs = self._predict([item for _, request in served for item in request.inputs])
        self._last_call_seconds = time.perf_counter() - started
        first = 0
        for link, request in served:
            last = first + len(request.inputs)
            link.send(codec.encode_prediction_response(request.msg_id, outputs[first:last]), copy=False)
            link.answered = True
            first = last
        if self.metrics is not None:
            self.metrics.record_call(len(served), self._receive_seconds, self._parse_seconds,
                                     time.perf_counter() - started)

    def _predict(self, inputs: List[bytes]) -> List[bytes]:
        """One output per input; a failure of the model's is answered as an error (the
        replica keeps serving). When the model raises on a batch of several inputs, each
        is run again alone, so that one client's bad input fails only its own query, not
        every query batched with it; but once the first MAX_FAILED_ALONE run alone have all
        failed, the model is taken to fail on anything, and the rest get the batch's error
        without a run (a model broken for every input cost a call per input). The inputs run
        alone in a random order: in arrival order, three bad inputs sent first failed the
        whole batch of other clients' good ones. A wrong number
        of outputs is not an input's fault: the whole batch gets that error, without retrying."""
        try:
            outputs = self.handler(self.input_type, inputs)
        except _MODEL_FAILURES as error:
            trace = traceback.format_exc()
            if len(inputs) == 1:
                model_log.error("the model raised on a batch of 1:\n%s", trace)
                return _errors(1, _describe(error))
            outputs = self._predict_each_alone(inputs, _errors(1, _describe(error))[0])
            failed = sum(output.startswith(codec.ERROR_OUTPUT_PREFIX) for output in outputs)
            model_log.error("the model raised on a batch of %d; run alone, %d of them failed:\n%s",
                            len(inputs), failed, trace)
        if len(outputs) != len(inputs):
            message = _count_error(len(outputs), len(inputs))
            model_log.error("%s", message)
            return _errors(len(inputs), message)
        limit = self.max_output_size
        if limit > 0 and outputs and max(map(len, outputs)) > limit:      # one C-level pass
            outputs = [self._too_large(output) if len(output) > limit else output for output in outputs]
        return outputs

    def _predict_each_alone(self, inputs: List[bytes], batch_error: bytes) -> List[bytes]:
        outputs = [batch_error] * len(inputs)
        failed = 0
        for runs, index in enumerate(_RETRY_ORDER.sample(range(len(inputs)), len(inputs))):
            if runs == MAX_FAILED_ALONE and failed == runs:
                break           # every one failed: the model fails on anything
            outputs[index] = self._predict_alone(inputs[index])
            failed += outputs[index].startswith(codec.ERROR_OUTPUT_PREFIX)
        return outputs

    def _predict_alone(self, item: bytes) -> bytes:
        """The model's output for this one input, or its error (not logged: the batch's is)."""
        try:
            outputs = self.handler(self.input_type, [item])
        except _MODEL_FAILURES as error:
            return _errors(1, _describe(error))[0]
        if len(outputs) != 1:
            return _errors(1, _count_error(len(outputs), 1))[0]
        return outputs[0]

    def _too_large(self, output: bytes) -> bytes:
        message = (f"the model returned an output of {len(output)} bytes; the cluster takes at "
                   f"most {self.max_output_size} (its max_output_size)")
        model_log.error("%s", message)
        return _errors(1, message)[0]


def _poll(poller: zmq.Poller, seconds: float) -> dict:
    """What is ready within ``seconds``. ZeroMQ's poll of nothing returns at once, and there is
    nothing to poll while every Unix socket link is down (without a signal wake-up): sleep."""
    timeout = max(0, math.ceil(seconds * 1000))
    if not poller.sockets:
        time.sleep(timeout / 1000)
        return {}
    return dict(poller.poll(timeout))


def _count_error(outputs: int, inputs: int) -> str:
    return f"the model returned {outputs} outputs for {inputs} inputs"


def _describe(error: BaseException) -> str:
    if isinstance(error, SystemExit):
        return f"SystemExit: the model called sys.exit({error.code!r})"
    return f"{type(error).__name__}: {error}"


def _errors(count: int, message: str) -> List[bytes]:
    if len(message) > MAX_ERROR_CHARACTERS:     # it once passed max_output_size: no answer at all
        message = f"{message[:MAX_ERROR_CHARACTERS]}... ({len(message)} characters in all)"
    return [codec.ERROR_OUTPUT_PREFIX + message.encode("utf-8", "replace")] * count


def run_as_batch_work() -> None:
    """Schedule this process (and the threads it starts later) as batch work (SCHED_BATCH):
    a replica woken by a batch then waits for the running thread's time slice to end rather
    than preempt it. Its share of the CPU is unchanged; where replicas and the query
    frontend share cores, the frontend is no longer cut off in the middle of a request (at
    64 clients on 2 cores it was scheduled in 0.20 times per request, now 0.02: README,
    Benchmark). Linux only; elsewhere, or if refused, the default stays."""
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_BATCH"):
        try:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        except OSError as error:
            log.info("could not schedule the replica as batch work: %s", error)


def main(config) -> None:
    run_as_batch_work()      # first: threads started later (numpy's, the model's) inherit it
    from clipper.container.closure import load_function, missing_module_hint, run_batch
    from clipper.container.frameworks import FrameworkMissing
    if not (config.model_name and config.model_version and config.model_path):
        raise SystemExit("CLIPPER_MODEL_NAME, CLIPPER_MODEL_VERSION and CLIPPER_MODEL_PATH must be set")
    input_type = InputType.parse(config.input_type)
    metrics = replica_metrics(config)      # first: a model may add its own as it loads (clipper_admin.metrics)
    try:
        function = load_function(config.model_path)
    except ImportError as error:
        # Exit code 3, as Clipper's closure container: a package the model needs is missing.
        log.error("cannot load the model: %s (%s)", error, missing_module_hint(error))
        raise SystemExit(3)
    except FrameworkMissing as error:
        log.error("cannot load the model: %s", error)
        raise SystemExit(3)
    serve_model(config, input_type, lambda kind, inputs: run_batch(function, kind, inputs), metrics)


def replica_metrics(config) -> Optional[ReplicaMetrics]:
    """Clipper's clipper_mc_* metrics of this replica, where the cluster collects them."""
    if not REPLICA.available:
        log.info("prometheus_client is not installed in %s: the replica reports no metrics", sys.executable)
        return None
    REPLICA.bind(config.model_name, config.model_version, config.replica_name, config.metrics_dir)
    return REPLICA if config.metrics_dir else None


def serve_model(config, input_type: InputType, handler: Handler, metrics: Optional[ReplicaMetrics]) -> None:
    """Serve ``handler`` to every query frontend worker of ``config`` until SIGTERM."""
    # Query frontend worker k listens on port + k, and in the local backend on its Unix socket.
    addresses = [UNIX_SCHEME + stream.socket_path(config.rpc_socket_dir, k) if config.rpc_socket_dir
                 else f"tcp://{config.ip}:{config.port + k}" for k in range(config.query_workers)]
    runtime = ContainerRuntime(config.model_name, config.model_version, input_type, addresses, handler,
                               config.rpc_server_public_key, config.rpc_client_secret_key,
                               config.max_output_size, metrics, busy_poll.window_seconds(config.busy_poll_us))
    runtime.serve_forever()
