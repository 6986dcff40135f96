"""A model container's side of Clipper's RPC: connect, register, serve batches, heartbeat.

It behaves as Clipper's Python container towards the query frontend (so it also works
with the original Clipper), with two differences: an exception in the model is reported
for that batch (see ``codec.ERROR_OUTPUT_PREFIX``) and the container keeps serving, and
an idle container heartbeats every second, so a restarted frontend finds it quickly.
"""
import logging
import signal
import time
import traceback
from typing import Callable, List, Optional, Sequence

import zmq

from clipper.datatypes import InputType
from clipper.rpc import auth, codec
from clipper.signal_wakeup import SignalWakeup

log = logging.getLogger("clipper.container")

POLL_MILLIS = 1000
# Without any message from the frontend for this long, start a new session (as Clipper does).
SESSION_TIMEOUT_SECONDS = 30.0

Handler = Callable[[InputType, Sequence[bytes]], List[bytes]]


class ContainerRuntime:
    def __init__(self, model_name: str, model_version: str, input_type: InputType,
                 address: str, handler: Handler, server_public_key: str = "", secret_key: str = ""):
        """With ``server_public_key`` (and this container's ``secret_key``), the connection
        is CURVE-authenticated, as the cluster's frontend requires (clipper.rpc.auth)."""
        self.model_name = model_name
        self.model_version = model_version
        self.input_type = input_type
        self.address = address
        self.handler = handler
        self.server_public_key = server_public_key
        self.secret_key = secret_key
        self.context = zmq.Context()
        self._stopping = False
        self._wakeup: Optional[SignalWakeup] = None

    def stop(self, *_args) -> None:
        self._stopping = True

    def serve_forever(self) -> None:
        # SIGTERM ends the wait for the next message at once (without the wake-up, the poll
        # ran to its timeout first); a batch in progress is still answered.
        self._wakeup = SignalWakeup()
        signal.signal(signal.SIGTERM, self.stop)
        try:
            while not self._stopping:
                self._session()
        finally:
            self._wakeup.close()
            self.context.term()

    def _session(self) -> None:
        """One connection with a fresh identity, until the frontend falls silent."""
        socket = self.context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        if self.server_public_key:
            auth.present_curve(socket, self.server_public_key, self.secret_key)
        socket.connect(self.address)
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        poller.register(self._wakeup, zmq.POLLIN)
        try:
            socket.send_multipart(codec.encode_heartbeat())
            last_heard = time.monotonic()
            while not self._stopping:
                ready = dict(poller.poll(POLL_MILLIS))
                if socket in ready:
                    last_heard = time.monotonic()
                    self._handle(socket, socket.recv_multipart())
                elif self._wakeup.fileno() in ready:
                    self._wakeup.drain()             # a signal: the loop looks at _stopping
                elif time.monotonic() - last_heard > SESSION_TIMEOUT_SECONDS:
                    log.info("no word from %s for %.0f s; reconnecting", self.address,
                             SESSION_TIMEOUT_SECONDS)
                    return
                else:
                    socket.send_multipart(codec.encode_heartbeat())
        finally:
            socket.close(0)

    def _handle(self, socket: zmq.Socket, frames: List[bytes]) -> None:
        try:
            message = codec.decode_clipper_message(frames)
        except codec.ProtocolError as error:
            log.error("ignoring a malformed message from the frontend: %s", error)
            return
        if isinstance(message, codec.HeartbeatReply):
            if message.heartbeat_type == codec.HEARTBEAT_REQUEST_METADATA:
                socket.send_multipart(codec.encode_new_container(
                    self.model_name, self.model_version, self.input_type))
                log.info("registered %s:%s with %s", self.model_name, self.model_version, self.address)
            return
        socket.send_multipart(codec.encode_prediction_response(
            message.msg_id, self._predict(message)), copy=False)

    def _predict(self, request: codec.PredictionRequest) -> List[bytes]:
        if request.input_type != self.input_type:
            return _errors(len(request.inputs),
                           f"this container takes {self.input_type.canonical_name}, "
                           f"got {request.input_type.canonical_name}")
        try:
            return self.handler(request.input_type, request.inputs)
        except Exception as error:  # the model's fault: report it, keep serving
            log.error("the model raised on a batch of %d:\n%s", len(request.inputs),
                      traceback.format_exc())
            return _errors(len(request.inputs), f"{type(error).__name__}: {error}")


def _errors(count: int, message: str) -> List[bytes]:
    return [codec.ERROR_OUTPUT_PREFIX + message.encode("utf-8", "replace")] * count


def main(config) -> None:
    from clipper.container.closure import load_function, run_batch
    from clipper.container.frameworks import FrameworkMissing
    if not (config.model_name and config.model_version and config.model_path):
        raise SystemExit("CLIPPER_MODEL_NAME, CLIPPER_MODEL_VERSION and CLIPPER_MODEL_PATH must be set")
    input_type = InputType.parse(config.input_type)
    try:
        function = load_function(config.model_path)
    except ImportError as error:
        # Exit code 3, as Clipper's closure container: a package the model needs is missing.
        log.error("cannot load the model: %s (deploy it with pkgs_to_install=[...])", error)
        raise SystemExit(3)
    except FrameworkMissing as error:
        log.error("cannot load the model: %s", error)
        raise SystemExit(3)
    runtime = ContainerRuntime(config.model_name, config.model_version, input_type,
                               f"tcp://{config.ip}:{config.port}",
                               lambda kind, inputs: run_batch(function, kind, inputs),
                               config.rpc_server_public_key, config.rpc_client_secret_key)
    runtime.serve_forever()
