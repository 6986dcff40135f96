"""Clipper's side of the model-container RPC: a ZeroMQ ROUTER that containers connect to.

Containers register (Heartbeat -> RequestContainerMetadata -> NewContainer), receive
batches and heartbeat; with CURVE keys, only peers holding the cluster's container key can
connect at all (clipper.rpc.auth). The local backend's replicas send the same messages on a
Unix socket in the cluster's state directory instead (clipper.rpc.stream, StreamPeer), which
the event loop reads itself. Beyond Clipper, a replica is dropped as soon as its connection
is gone (ROUTER_MANDATORY sends fail, and a disconnect triggers a probe of every replica; a
stream's end) instead of only after 30 s of silence, and its batch in flight is handed to
another replica.
"""
import asyncio
import contextlib
import itertools
import logging
import os
import socket
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Dict, Hashable, List, Optional, Set, Tuple

import zmq
from zmq.utils.monitor import parse_monitor_message

from clipper import busy_poll, eventloop
from clipper.query_frontend.dispatch import Batch, BatchSizer, Dispatcher, Replica
from clipper.config import Config
from clipper.errors import RequestError
from clipper.log_limit import LogRateLimit
from clipper.management.requests import check_group_string
from clipper.datatypes import InputType
from clipper.redis_schema import Container, Model, ModelId
from clipper.rpc import auth, codec, stream
from clipper.rpc.sockets import (
    NOBLOCK, has_message, receive_frames, seed_routing_ids, send_frames, shut_down_connection)

log = logging.getLogger("clipper.query_frontend.rpc")

LOG_LINES_PER_WINDOW = 20
LOG_WINDOW_SECONDS = 10.0

LIVENESS_CHECK_PERIOD = 1.0
# Messages handled per wake-up before giving HTTP requests their turn.
MAX_MESSAGES_PER_DRAIN = 256
# The most RPC connections open at once; more are closed as they come. Far more replicas
# than one frontend serves, and a bound on how many routing ids one peer can take (see
# seed_routing_ids) that does not grow with the open-file limit.
MAX_CONNECTIONS = 1024
# The frontend busy-polls only while no batch of more than this many inputs went to any
# replica in the last BUSY_POLL_HEAVY_SECONDS (see poll_if_light).
BUSY_POLL_MAX_BATCH = 4
BUSY_POLL_HEAVY_SECONDS = 0.1


class RpcServer:
    def __init__(self, config: Config, recorder):
        """``recorder`` records replicas in Redis: ``added(Container)``, ``removed(Container)``."""
        self.port = config.rpc_port + config.query_worker
        self.address = f"tcp://{config.host}:{self.port}"
        self.replica_timeout = config.replica_timeout
        self.recorder = recorder
        # Plain sockets read from the event loop's own poller: zmq.asyncio spends a future,
        # and often a loop iteration, on every message (with wrk at 1 connection, frontend
        # CPU per request fell from 407 to 361 us and p50 from 576 to 502 us).
        self.context = zmq.Context()
        seed_routing_ids()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.setsockopt(zmq.LINGER, 0)
        # libzmq checks each frame's length as it arrives and disconnects a peer that announces
        # more: a frame is never buffered whole first.
        self.max_frame_size = config.max_output_size if config.max_output_size > 0 else -1
        self.socket.setsockopt(zmq.MAXMSGSIZE, self.max_frame_size)
        self._authenticator = None
        if config.rpc_server_secret_key:
            self._authenticator = auth.require_curve(self.context, self.socket,
                                                     config.rpc_server_secret_key,
                                                     config.rpc_client_public_key)
        # Where the local backend's replicas connect instead ("": no Unix socket).
        self.socket_path = (stream.socket_path(config.rpc_socket_dir, config.query_worker)
                            if config.rpc_socket_dir else "")
        self._listener: Optional[socket.socket] = None
        self._stream_server: Optional[asyncio.AbstractServer] = None
        self._stream_peers: Set["StreamPeer"] = set()
        # A replica is known by its ZeroMQ routing id (bytes) or by its StreamPeer: no
        # ZeroMQ peer can claim a stream peer's identity.
        self.replicas: Dict[Hashable, Replica] = {}
        self._connection_ids = itertools.count()
        self._replica_ids = defaultdict(itertools.count)
        self.dispatcher: Optional[Dispatcher] = None
        self.poller = busy_poll.LoopPoller(busy_poll.window_seconds(config.busy_poll_us))
        self._heavy_until = 0.0             # busy_poll's clock: until then, the load is heavy
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._probe_pending = False
        self._messages: Optional[_Drain] = None          # of the socket and of its monitor,
        self._monitor_events: Optional[_Drain] = None    # made with the event loop
        self._monitor: Optional[zmq.Socket] = None
        self._connections: Set[int] = set()     # file descriptors of the open connections
        # Peers still connected that serve nothing: their version was deleted, or it takes
        # another input type (see version_deleted and version_registered).
        self._retired: Dict[Hashable, Retired] = {}
        # Each registered version's registration and input type (version_registered): a
        # replica that takes another type is never sent its queries.
        self._registrations: Dict[ModelId, Tuple[Model, InputType]] = {}

    def bind(self) -> None:
        self.socket.bind(self.address)
        if self.socket_path:
            self._listener = _unix_listener(self.socket_path)

    def attach(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._monitor = self.socket.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        # Handlers looked up at each message, so that a test can stand in for one.
        self._messages = _Drain(self._loop, self.socket, lambda frames: self._on_routed_message(frames))
        self._monitor_events = _Drain(self._loop, self._monitor, lambda frames: self._on_monitor_event(frames))
        for drain in (self._messages, self._monitor_events):
            self._loop.add_reader(drain.socket.FD, drain.on_readable)
            drain.run()         # messages may have arrived before the reader was added
        if self._listener is not None:
            self._stream_server = await self._loop.create_unix_server(
                lambda: StreamPeer(self), sock=self._listener)
        try:
            await self._check_liveness()
        finally:
            if self._stream_server is not None:
                self._stream_server.close()
                for peer in list(self._stream_peers):
                    peer.transport.abort()
                with contextlib.suppress(OSError):
                    os.unlink(self.socket_path)
            self._loop.remove_reader(self._monitor.FD)
            self._loop.remove_reader(self.socket.FD)
            self.socket.disable_monitor()
            self._monitor.close(0)
            self.socket.close(0)
            if self._authenticator is not None:
                self._authenticator.stop()
            self.context.term()

    # ---- sending ----
    def send_batch(self, replica: Replica, batch: Batch) -> bool:
        if len(batch.tasks) > BUSY_POLL_MAX_BATCH:
            self._heavy_until = busy_poll.now() + BUSY_POLL_HEAVY_SECONDS
        frames = codec.encode_prediction_request(batch.msg_id, replica.input_type,
                                                 [task.input for task in batch.tasks])
        sent = self._send(replica.identity, frames)
        if not sent:
            # The dispatcher forgets it; so must we, or it stays listed and, known here, is
            # never asked to register again. After this turn: the dispatcher is mid-dispatch.
            self._loop.call_soon(self.drop, replica, "a batch could not be sent to it")
        self.poll_if_light()                # the reply comes soon
        return sent

    def _send(self, identity: Hashable, frames) -> bool:
        if type(identity) is StreamPeer:
            return identity.send(frames)
        try:
            send_frames(self.socket, [identity, *frames], NOBLOCK, copy=False)
        except zmq.ZMQError as error:
            # ROUTER_MANDATORY: a peer that is gone fails right here (EHOSTUNREACH).
            log.debug("send to %r failed: %s", identity, error)
            return False
        finally:
            self._messages.after_send()
        return True

    def poll_if_light(self) -> None:
        """Busy polling (clipper.busy_poll) while the load is light: no large batch went to
        any replica lately (one quiet application does not make it light). Under load the
        loop is seldom idle, and a loop that polls in its short gaps yields its core to the
        clients or a replica just when its own work arrives."""
        if busy_poll.now() >= self._heavy_until:
            self.poller.poke()

    # ---- receiving ----
    def _on_routed_message(self, frames: List[bytes]) -> None:
        self.on_message(frames[0], frames[1:])

    def on_message(self, identity: Hashable, frames: List[bytes]) -> None:
        """A message from the peer ``identity``, as a container's DEALER sends it."""
        try:
            message = codec.decode_container_message(frames)
        except codec.ProtocolError as error:
            log.warning("ignoring a malformed message from a container: %s", error)
            return
        replica = self.replicas.get(identity)
        retired = self._retired.get(identity)
        if replica is not None:
            replica.last_seen = self._loop.time()
        elif retired is not None:
            retired.last_seen = self._loop.time()
        if isinstance(message, codec.PredictionResponse):
            if replica is not None:
                self.dispatcher.on_response(identity, message.msg_id, message.outputs)
        elif isinstance(message, codec.Heartbeat):
            known = replica is not None or retired is not None
            kind = codec.HEARTBEAT_KEEPALIVE if known else codec.HEARTBEAT_REQUEST_METADATA
            self._send(identity, codec.encode_heartbeat_reply(kind))
        elif isinstance(message, codec.NewContainer) and replica is None and retired is None:
            self._register(identity, message)

    def _register(self, identity: Hashable, message: codec.NewContainer) -> None:
        if message.rpc_version != codec.RPC_VERSION:
            log.error("container %s:%s speaks RPC version %d, not %d; ignoring it",
                      message.model_name, message.model_version, message.rpc_version,
                      codec.RPC_VERSION)
            return
        try:        # the management API's rule: these become parts of Redis keys
            check_group_string(message.model_name, "model name")
            check_group_string(message.model_version, "model version")
        except RequestError as error:
            log.error("a container announced model %r:%r; ignoring it: %s",
                      message.model_name[:200], message.model_version[:200], error.message)
            return
        model_id = (message.model_name, message.model_version)
        registered = self._registrations.get(model_id, (None, message.input_type))[1]
        if registered != message.input_type:
            # Its inputs would be misread (Clipper could not even encode them for it).
            log.error("a container of model %s:%s takes %s, but the version is registered for %s; "
                      "it serves nothing until the version takes its type",
                      *model_id, message.input_type.canonical_name, registered.canonical_name)
            self._retired[identity] = Retired(model_id, message.input_type, None, self._loop.time())
            return
        replica = Replica(identity, model_id, next(self._replica_ids[model_id]),
                          message.input_type, BatchSizer(), self._loop.time())
        self.replicas[identity] = replica
        log.info("replica %d of model %s:%s connected", replica.replica_id, *model_id)
        self.dispatcher.add_replica(replica)
        self.recorder.added(self._container(replica, next(self._connection_ids)))

    def drop(self, replica: Replica, reason: str) -> None:
        if self.replicas.get(replica.identity) is not replica:
            return          # dropped already (and maybe registered again: that one stays)
        del self.replicas[replica.identity]
        log.info("replica %d of model %s:%s dropped: %s", replica.replica_id, *replica.model_id, reason)
        self.dispatcher.remove_replica(replica)
        if not self.dispatcher.accepts(replica.model_id):     # its last replica: numbering restarts
            self._replica_ids.pop(replica.model_id, None)
        self.recorder.removed(self._container(replica, -1))

    # ---- versions deleted and registered (told by the query frontend) ----
    def version_deleted(self, model_id: ModelId) -> None:
        """As Clipper's query frontend does, the version's replicas stop serving and are no
        longer listed. Each stays connected but registers again only if the version comes
        back as the same registration (its batch size or labels changed, say): a version
        registered anew for other code is not served by the old. A replica that reconnects
        (restarted, say) registers as any new one does."""
        served = self._registrations.pop(model_id, (None, None))[0]
        for replica in [r for r in self.replicas.values() if r.model_id == model_id]:
            self._retire(replica, "its model version was deleted", served)

    def version_registered(self, model: Model, input_type: InputType) -> None:
        """A registration of a version (new or changed): replicas that take another input type
        stop serving (their inputs would be misread), and retired peers it fits register."""
        model_id = (model.name, model.version)
        self._registrations[model_id] = (model, input_type)
        for replica in [r for r in self.replicas.values()
                        if r.model_id == model_id and r.input_type != input_type]:
            self._retire(replica, "it takes another input type than its version is registered for", None)
        ask = codec.encode_heartbeat_reply(codec.HEARTBEAT_REQUEST_METADATA)
        for identity, retired in list(self._retired.items()):
            if retired.model_id == model_id and retired.fits(model, input_type):
                del self._retired[identity]
                self._send(identity, ask)           # it answers with its NewContainer

    def _retire(self, replica: Replica, reason: str, served: Optional[Model]) -> None:
        self.drop(replica, reason)
        self._retired[replica.identity] = Retired(replica.model_id, replica.input_type, served,
                                                  self._loop.time())

    def forget_peer(self, identity: Hashable) -> None:
        self._retired.pop(identity, None)
        replica = self.replicas.get(identity)
        if replica is not None:
            self.drop(replica, "its connection closed")

    @staticmethod
    def _container(replica: Replica, connection_id: int) -> Container:
        return Container(replica.model_id[0], replica.model_id[1], replica.replica_id,
                         replica.input_type.canonical_name, connection_id)

    # ---- liveness ----
    def _on_monitor_event(self, frames: List[bytes]) -> None:
        event = parse_monitor_message(frames)
        fd = int(event["value"])
        if event["event"] == zmq.EVENT_ACCEPTED:
            self._on_accepted(fd)
            return
        self._connections.discard(fd)
        # libzmq says no more: the peer closed, or it broke the protocol and was cut off.
        log.info("an RPC peer disconnected (a replica that stopped, as when scaling down; if it did "
                 "not stop, it broke the protocol, e.g. with a frame over max_output_size, %s bytes)",
                 self.max_frame_size if self.max_frame_size > 0 else "no limit")
        if not self._probe_pending:
            # The peer's pipe is torn down just after this event: probe a moment later.
            self._probe_pending = True
            self._loop.call_later(0.05, self.probe)

    def _on_accepted(self, fd: int) -> None:
        if len(self._connections) < MAX_CONNECTIONS:
            self._connections.add(fd)
            return
        log.warning("closed a new RPC connection: %d are open, the most this frontend takes",
                    MAX_CONNECTIONS)
        shut_down_connection(fd, self.port)

    def probe(self) -> None:
        """Send a keep-alive to every replica; a failed send means the peer is gone."""
        self._probe_pending = False
        keepalive = codec.encode_heartbeat_reply(codec.HEARTBEAT_KEEPALIVE)
        for identity in [*self.replicas, *self._retired]:
            if not self._send(identity, keepalive):
                self.forget_peer(identity)

    async def _check_liveness(self) -> None:
        while True:
            await asyncio.sleep(LIVENESS_CHECK_PERIOD)
            now = self._loop.time()
            for identity in [i for i, r in self._retired.items() if now - r.last_seen > self.replica_timeout]:
                del self._retired[identity]
            for replica in list(self.replicas.values()):
                if now - replica.last_seen > self.replica_timeout:
                    self.drop(replica, f"silent for {self.replica_timeout:.0f} s")
                elif self.dispatcher.batch_age(replica) > self.replica_timeout:
                    # It heartbeats (from another thread, say) while its model hangs: without
                    # this, its version waited for ever. Its batch goes to another replica.
                    self.drop(replica, f"its batch unanswered for {self.replica_timeout:.0f} s")
            self.dispatcher.expire()


@dataclass
class Retired:
    """A connected peer that serves nothing: a replica of a deleted version (``served``: the
    registration it served), or one whose input type its version does not take (None)."""
    model_id: ModelId
    input_type: InputType          # as it announced
    served: Optional[Model]
    last_seen: float

    def fits(self, registration: Model, input_type: InputType) -> bool:
        if input_type != self.input_type:
            return False
        return self.served is None or (
            (self.served.container_name, self.served.model_data_path)
            == (registration.container_name, registration.model_data_path))


class _Drain:
    """Reads what waits on a ZeroMQ socket that the event loop watches. Its descriptor is
    edge-triggered: a drain must leave nothing behind, even when a handler raises (a bug of
    ours), and a send on the socket may take the edge of an arrival."""

    def __init__(self, loop: asyncio.AbstractEventLoop, socket: zmq.Socket,
                 handle: Callable[[List[bytes]], None]):
        self.loop, self.socket, self.handle = loop, socket, handle
        # True while a drain runs or is scheduled, so that what a drain sends (heartbeat
        # replies, next batches) does not schedule more: under a flood of heartbeats, drains
        # doubled every turn of the loop, and HTTP requests waited seconds behind them.
        self.pending = False

    def on_readable(self) -> None:
        if not self.pending:            # else a drain is on its way, and looks anyway
            self.run()

    def run(self) -> None:
        self.pending = True
        more = True                     # unless it returns: see the class's comment
        try:
            more = _receive_waiting(self.socket, self.handle)
        finally:
            if more:
                self.loop.call_soon(self.run)       # the limit left some: after other work
            else:
                self.pending = False

    def after_send(self) -> None:
        """ZeroMQ's EVENTS says whether a message waits: then look again."""
        if not self.pending and has_message(self.socket):
            self.pending = True
            self.loop.call_soon(self.run)


class StreamPeer(asyncio.Protocol):
    """A replica connected over the Unix socket; it is its own identity."""

    def __init__(self, server: RpcServer):
        self.server = server
        self.reader = stream.MessageReader(max(server.max_frame_size, 0))
        self.transport: Optional[asyncio.Transport] = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        # uvloop's writelines sends the frames as they are (writev) and pauses a protocol
        # whose buffer fills. asyncio's joins them into one copy before CPython 3.12, and in
        # 3.12.0-3.12.8 and 3.13.0-3.13.1 never pauses (gh-127655): there a peer that reads
        # no answers grew the buffer without bound, so one joined write() is sent instead.
        self._writes_frames_as_they_are = eventloop.is_uvloop(asyncio.get_running_loop())
        self.server._stream_peers.add(self)

    def data_received(self, data: bytes) -> None:
        # An exception here (a bug of ours) makes the transport log it and close this
        # connection: the replica is dropped, its batch goes back to the queue, and it
        # reconnects as a new replica.
        try:
            messages = self.reader.feed(data)
        except stream.StreamError as error:
            log.warning("closed a replica's connection that broke the RPC framing: %s", error)
            self.transport.abort()
            return
        for frames in messages:
            self.server.on_message(self, frames)

    def connection_lost(self, exc) -> None:
        self.server._stream_peers.discard(self)
        self.server.forget_peer(self)

    def send(self, frames) -> bool:
        if self.transport.is_closing():
            return False
        if self._writes_frames_as_they_are:       # no copy of a batch's inputs
            self.transport.writelines([stream.header(frames), *frames])
        else:
            self.transport.write(stream.encode(frames))
        return True

    # The peer's messages are answered (heartbeats, at least): while it does not take the
    # answers, read none of its messages, so that unsent answers cannot pile up here. Our
    # replicas read a whole batch before they answer it, and the dispatcher sends one at a
    # time, so this never holds an answer back.
    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.transport.is_closing():
            self.transport.resume_reading()


def _unix_listener(path: str) -> socket.socket:
    """A listening Unix socket at ``path``, in place of one a crashed frontend left."""
    with contextlib.suppress(OSError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(128)
    listener.setblocking(False)
    return listener


# What this logger says is about RPC peers, whom anyone on an open port can make it say: a
# peer sending malformed messages as fast as it can wrote 10 MB of log a second.
log.addFilter(LogRateLimit(LOG_LINES_PER_WINDOW, LOG_WINDOW_SECONDS, "RPC peers"))


def _receive_waiting(socket: zmq.Socket, handle: Callable[[List[bytes]], None]) -> bool:
    """Hand each waiting message to ``handle``; True if the limit left some waiting."""
    for _ in range(MAX_MESSAGES_PER_DRAIN):
        if not has_message(socket):
            return False
        handle(receive_frames(socket))
    return True
