"""The query frontend's RPC server on a real ZeroMQ port, without a cluster: what peers that
come and go leave behind."""
import asyncio
import contextlib
import logging
import os
import socket
import threading
import time

import pytest
import uvloop
import zmq

from clipper.config import Config
from clipper.datatypes import InputType
from clipper.container.runtime import RECONNECT_MILLIS, ContainerRuntime
from clipper.query_frontend.dispatch import Dispatcher, Task
from clipper.log_limit import LogRateLimit
from clipper.query_frontend.rpc_server import LIVENESS_CHECK_PERIOD, RpcServer
from clipper.redis_schema import Model
from clipper.rpc import codec, stream
from clipper.rpc.sockets import shut_down_connection
from helpers import wait_for
from rpc_flood import flood_heartbeats


class Recorder:
    """What the frontend would write to Redis: the replicas connected now."""

    def __init__(self):
        self.live = {}

    def added(self, container):
        self.live[(container.model_name, container.replica_id)] = container

    def removed(self, container):
        self.live.pop((container.model_name, container.replica_id))


def serving(port, new_loop=asyncio.new_event_loop, **settings):
    """An RpcServer on ``port``, run by an event loop in a thread; returns it and a stop()."""
    recorder = Recorder()
    server = RpcServer(Config(rpc_port=port, **settings), recorder)
    server.attach(Dispatcher(server.send_batch, time.monotonic))
    server.bind()
    loop = new_loop()
    task = loop.create_task(server.run())

    def run():
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task)
    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: server._monitor_events is not None, 10, "the RPC server's loop to run")

    def stop():
        loop.call_soon_threadsafe(task.cancel)
        thread.join(5)
        loop.close()
    return server, recorder, stop


def register(context, port, name):
    peer = context.socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.connect(f"tcp://127.0.0.1:{port}")
    peer.send_multipart(codec.encode_new_container(name, "1", InputType.DOUBLES))
    return peer


def test_peers_registering_under_ever_new_names_leave_nothing_behind():
    """Each name used to keep a queue and a replica counter for good: a peer registering
    under new names, over and over, grew the frontend by about 1.5 KB a name."""
    port = 27710
    server, recorder, stop = serving(port)
    context = zmq.Context()
    try:
        peers = [register(context, port, f"fake{i}") for i in range(50)]
        wait_for(lambda: len(recorder.live) == 50, 10, "50 registrations")
        for peer in peers:
            peer.close(0)
        wait_for(lambda: not recorder.live, 10, "every fake replica dropped")
        time.sleep(LIVENESS_CHECK_PERIOD * 1.5)       # the liveness check clears empty queues
        assert server.dispatcher.queues == {}
        # A version whose replicas all left numbers its next one from 0 again.
        again = register(context, port, "fake7")
        wait_for(lambda: recorder.live, 10, "a new registration")
        assert list(recorder.live) == [("fake7", 0)]
        again.close(0)
    finally:
        context.term()
        stop()


def test_a_replica_that_heartbeats_but_never_answers_its_batch_is_dropped():
    """A container whose model hangs while another thread of it heartbeats: its batch was
    waited for as long as the heartbeats came, and its version answered nothing but defaults."""
    port = 27711
    server, recorder, stop = serving(port, replica_timeout=1.0)
    context = zmq.Context()
    peer = register(context, port, "hangs")
    try:
        wait_for(lambda: recorder.live, 10, "the registration")
        task = Task(b"\0" * 8, time.monotonic() + 60, 60)
        server._loop.call_soon_threadsafe(server.dispatcher.submit, ("hangs", "1"), task)
        assert peer.poll(5000), "no batch came"
        assert isinstance(codec.decode_clipper_message(peer.recv_multipart()), codec.PredictionRequest)
        deadline = time.monotonic() + 10
        while recorder.live and time.monotonic() < deadline:      # heartbeats, never an answer
            peer.send_multipart(codec.encode_heartbeat())
            time.sleep(0.2)
        assert not recorder.live, "the replica was kept"
        assert task.lost_replicas == 1 and not task.done        # back in the queue for another
    finally:
        peer.close(0)
        context.term()
        stop()


def test_a_replica_that_a_batch_cannot_be_sent_to_is_forgotten_everywhere():
    """A batch that cannot be sent (the peer is gone, or its pipe is full): the dispatcher
    forgot the replica, but the RPC server kept it, listed by get_all_model_replicas, and,
    known there, never asked to register again. Here the peer's routing id names no
    connection, as when a peer has left and the monitor's news of it is still to come."""
    port = 27712
    server, recorder, stop = serving(port)
    try:
        frames = codec.encode_new_container("gone", "1", InputType.DOUBLES)
        server._loop.call_soon_threadsafe(server.on_message, b"\0no-such-peer", frames)
        wait_for(lambda: recorder.live, 10, "the registration")
        task = Task(b"\0" * 8, time.monotonic() + 60, 60)
        server._loop.call_soon_threadsafe(server.dispatcher.submit, ("gone", "1"), task)
        wait_for(lambda: not recorder.live, 10, "the unreachable replica forgotten")
        assert server.replicas == {} and not task.done       # back in the queue
    finally:
        stop()


def test_the_log_says_a_few_lines_per_window_then_how_many_it_left_out():
    limit = LogRateLimit(lines=3, seconds=0.2, about="RPC peers")
    records = [logging.LogRecord("rpc", logging.WARNING, __file__, 1, "junk %d", (n,), None)
               for n in range(10)]
    assert [limit.filter(record) for record in records] == [True] * 3 + [False] * 7
    time.sleep(0.25)
    later = logging.LogRecord("rpc", logging.INFO, __file__, 1, "a peer left", (), None)
    assert limit.filter(later)
    assert later.getMessage() == "(7 lines about RPC peers left out before this one) a peer left"


def test_a_connection_is_shut_down_only_if_it_is_still_one_to_the_rpc_port():
    """The descriptor libzmq reported may have been closed and reused (by an HTTP client's
    connection, say) before the frontend acts on it: that one is left alone."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    with listener, socket.create_connection(("127.0.0.1", port)) as client:
        accepted, _ = listener.accept()
        with accepted:
            shut_down_connection(accepted.fileno(), port + 1)      # another port's number
            client.setblocking(False)
            try:
                client.recv(1)
                raise AssertionError("the connection was closed")
            except BlockingIOError:
                pass
            shut_down_connection(accepted.fileno(), port)
            client.setblocking(True)
            client.settimeout(5)
            assert client.recv(1) == b""


def test_a_descriptor_that_is_no_longer_a_socket_is_left_alone_and_nothing_leaks():
    """Reused by a pipe, say: each look at it kept a duplicate of it open for good."""
    read_end, write_end = os.pipe()
    try:
        open_before = len(os.listdir("/proc/self/fd"))
        for _ in range(20):
            shut_down_connection(read_end, 7000)
        assert len(os.listdir("/proc/self/fd")) == open_before
    finally:
        os.close(read_end)
        os.close(write_end)


def raising_the_first_time(server, handler_name):
    """Make the server's handler ``handler_name`` raise on its first call (a bug of ours);
    returns the list of the calls it gets."""
    handle, calls = getattr(server, handler_name), []

    def first_one_raises(frames):
        calls.append(frames)
        if len(calls) == 1:
            raise RuntimeError("a bug in a handler")
        handle(frames)
    setattr(server, handler_name, first_one_raises)
    return calls


def test_a_handler_that_raises_leaves_no_message_waiting_for_the_next_arrival():
    """The socket's descriptor is edge-triggered: a drain ended by a handler's exception (a
    bug of ours) left the messages behind the one that raised unread until another arrived."""
    port = 27713
    server, _, stop = serving(port)
    raising_the_first_time(server, "_on_routed_message")
    context = zmq.Context()
    peer = context.socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    try:
        peer.connect(f"tcp://127.0.0.1:{port}")
        time.sleep(0.2)
        # Both arrive while the loop is busy, so one drain finds both waiting.
        server._loop.call_soon_threadsafe(time.sleep, 0.5)
        peer.send_multipart(codec.encode_heartbeat())
        peer.send_multipart(codec.encode_heartbeat())
        assert peer.poll(3000), "the second heartbeat was never answered"
        assert codec.decode_clipper_message(peer.recv_multipart()) is not None
    finally:
        peer.close(0)
        context.term()
        stop()


def test_a_monitor_event_handler_that_raises_leaves_no_event_waiting():
    """The same for the socket's monitor (connections accepted and closed): an event behind
    one whose handler raised waited for the next event to be read."""
    port = 27717
    server, _, stop = serving(port)
    calls = raising_the_first_time(server, "_on_monitor_event")
    context = zmq.Context()
    peers = [context.socket(zmq.DEALER) for _ in range(2)]
    try:
        # Both connections are accepted while the loop is busy: one drain finds both events.
        server._loop.call_soon_threadsafe(time.sleep, 0.5)
        time.sleep(0.1)
        for peer in peers:
            peer.setsockopt(zmq.LINGER, 0)
            peer.connect(f"tcp://127.0.0.1:{port}")
        wait_for(lambda: len(calls) == 2, 3, "the second connection's event handled")
        assert len(server._connections) == 1
    finally:
        for peer in peers:
            peer.close(0)
        context.term()
        stop()


# ---- the local backend's replicas, on the Unix socket (clipper.rpc.stream) ----
def stream_peer(path):
    """A raw connection to the Unix socket; returns it and a receive() of whole messages."""
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    peer.settimeout(10)
    peer.connect(path)
    reader, waiting = stream.MessageReader(), []

    def receive():
        while not waiting:
            data = peer.recv(65536)
            if not data:
                return None          # the frontend closed the connection
            waiting.extend(reader.feed(data))
        return codec.decode_clipper_message(waiting.pop(0))
    return peer, receive


def register_on_stream(path, name):
    peer, receive = stream_peer(path)
    peer.sendall(stream.encode(codec.encode_heartbeat()))
    assert receive() == codec.HeartbeatReply(codec.HEARTBEAT_REQUEST_METADATA)
    peer.sendall(stream.encode(codec.encode_new_container(name, "1", InputType.DOUBLES)))
    return peer, receive


def test_a_replica_on_the_unix_socket_is_dropped_the_moment_its_connection_closes(tmp_path):
    path = stream.socket_path(str(tmp_path), 0)
    open(path, "w").close()             # what a crashed frontend left: replaced
    server, recorder, stop = serving(27714, rpc_socket_dir=str(tmp_path))
    try:
        peer, receive = register_on_stream(path, "on-stream")
        wait_for(lambda: ("on-stream", 0) in recorder.live, 10, "the registration")
        peer.sendall(stream.encode(codec.encode_heartbeat()))
        assert receive() == codec.HeartbeatReply(codec.HEARTBEAT_KEEPALIVE)
        started = time.monotonic()
        peer.close()
        wait_for(lambda: not recorder.live, 10, "the replica dropped")
        assert time.monotonic() - started < 1.0       # not after replica_timeout (30 s)
    finally:
        stop()
    assert not os.path.exists(path)


def test_a_peer_that_breaks_the_framing_is_cut_off_and_the_others_keep_serving(tmp_path):
    path = stream.socket_path(str(tmp_path), 0)
    server, recorder, stop = serving(27715, rpc_socket_dir=str(tmp_path), max_output_size=1000)
    try:
        good, receive_good = register_on_stream(path, "good")
        wait_for(lambda: ("good", 0) in recorder.live, 10, "the registration")
        for broken in (b"\x00\x00\x00\x00", stream.header([b"", b"x" * 1001])):
            bad, receive_bad = stream_peer(path)
            bad.sendall(broken)
            assert receive_bad() is None
            bad.close()
        good.sendall(stream.encode(codec.encode_heartbeat()))
        assert receive_good() == codec.HeartbeatReply(codec.HEARTBEAT_KEEPALIVE)
        assert ("good", 0) in recorder.live
        good.close()
    finally:
        stop()


def test_our_replica_waits_for_the_unix_socket_then_serves_over_it(tmp_path):
    path = stream.socket_path(str(tmp_path), 0)
    runtime = ContainerRuntime("summer", "1", InputType.STRINGS, ["unix://" + path],
                               lambda kind, inputs: [b"seen:" + item for item in inputs])
    serving_thread = threading.Thread(target=runtime.serve)
    serving_thread.start()
    time.sleep(0.2)                     # it starts first: the frontend is not there yet
    server, recorder, stop = serving(27716, rpc_socket_dir=str(tmp_path))
    try:
        wait_for(lambda: ("summer", 0) in recorder.live, 10, "the replica to connect")
        task = Task(b"hello", time.monotonic() + 10, 10.0)
        server._loop.call_soon_threadsafe(server.dispatcher.submit, ("summer", "1"), task)
        wait_for(lambda: task.done, 10, "the answer")
        assert task.output == b"seen:hello"
    finally:
        runtime.stop()
        serving_thread.join(10)
        stop()


@pytest.mark.parametrize("new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_a_peer_that_sends_but_never_reads_cannot_grow_the_frontends_write_buffer(tmp_path, new_loop):
    """Each heartbeat is answered: a peer that flooded heartbeats and read nothing grew the
    frontend's buffer of unsent answers by about 9 MB a second, without bound. The frontend
    now stops reading a peer while its answers to it are not taken (the frontends run on
    uvloop, and on asyncio where uvloop is not installed)."""
    path = stream.socket_path(str(tmp_path), 0)
    server, recorder, stop = serving(23717, new_loop, rpc_socket_dir=str(tmp_path))
    try:
        flooder, sent = flood_heartbeats(path)
        assert sent < 4 << 20, f"the frontend took {sent} bytes from a peer that reads nothing"
        (peer,) = server._stream_peers
        assert peer.transport.get_write_buffer_size() < 1 << 20
        good, receive_good = register_on_stream(path, "good")       # the others are served
        wait_for(lambda: ("good", 0) in recorder.live, 10, "the registration")
        good.sendall(stream.encode(codec.encode_heartbeat()))
        assert receive_good() == codec.HeartbeatReply(codec.HEARTBEAT_KEEPALIVE)
        good.close()
        flooder.close()
    finally:
        stop()


def test_our_replica_whose_frontend_is_gone_tries_again_without_spinning(tmp_path):
    """Without a signal wake-up to poll (serve() rather than serve_forever()), a replica
    whose Unix socket links were all down polled nothing, which returns at once: it spun
    at 100% CPU until the frontend came back. It now tries every RECONNECT_MILLIS."""
    runtime = ContainerRuntime("idle", "1", InputType.STRINGS,
                               ["unix://" + stream.socket_path(str(tmp_path), 0)], lambda kind, inputs: inputs)
    turns, turn = [], runtime._turn
    runtime._turn = lambda links: (turns.append(None), turn(links))
    serving_thread = threading.Thread(target=runtime.serve)
    serving_thread.start()
    time.sleep(1.0)
    runtime.stop()
    serving_thread.join(10)
    assert 0 < len(turns) < 1000 * 2 / RECONNECT_MILLIS      # about one every 20 ms, not 100,000s


def _heartbeat_until_asked(peer, registration, recorder, seconds=5.0):
    """Heartbeat as a container does, sending its registration when asked for it."""
    deadline = time.monotonic() + seconds
    while not recorder.live and time.monotonic() < deadline:
        peer.send_multipart(codec.encode_heartbeat())
        if peer.poll(200):
            reply = codec.decode_clipper_message(peer.recv_multipart())
            if reply.heartbeat_type == codec.HEARTBEAT_REQUEST_METADATA:
                peer.send_multipart(registration)


def test_a_replica_refused_for_its_input_type_serves_once_its_version_takes_that_type():
    """Refused while m:1 took ints, a doubles replica still connected registers once m:1 is
    registered for doubles (it was answered keep-alives for ever)."""
    port = 27790
    server, recorder, stop = serving(port)
    server._loop.call_soon_threadsafe(
        server.version_registered, Model("m", "1", "ints", ("",), "c", "p", -1), InputType.INTS)
    wait_for(lambda: ("m", "1") in server._registrations, 10, "the version registered for ints")
    context = zmq.Context()
    peer = context.socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.connect(f"tcp://127.0.0.1:{port}")
    registration = codec.encode_new_container("m", "1", InputType.DOUBLES)
    try:
        peer.send_multipart(registration)
        wait_for(lambda: server._retired, 10, "the replica of another input type refused")
        assert not recorder.live

        server._loop.call_soon_threadsafe(
            server.version_registered, Model("m", "1", "doubles", ("",), "c", "p", -1), InputType.DOUBLES)
        _heartbeat_until_asked(peer, registration, recorder)
        assert recorder.live and not server._retired
    finally:
        peer.close(0)
        context.term()
        stop()


def test_a_deleted_versions_replica_registers_again_only_for_the_same_registration():
    """Deleted and registered again as it was (to change its batch size, say), the version
    takes its running replicas back; registered for other code, it does not."""
    port = 27792
    server, recorder, stop = serving(port)
    context = zmq.Context()
    peer = context.socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.connect(f"tcp://127.0.0.1:{port}")
    registration = codec.encode_new_container("m", "1", InputType.DOUBLES)
    first = Model("m", "1", "doubles", ("",), "image-a", "DEPRECATED", -1)
    try:
        server._loop.call_soon_threadsafe(server.version_registered, first, InputType.DOUBLES)
        peer.send_multipart(registration)
        wait_for(lambda: recorder.live, 10, "the registration")
        server._loop.call_soon_threadsafe(server.version_deleted, ("m", "1"))
        wait_for(lambda: not recorder.live and server._retired, 10, "the replica retired")
        other_code = Model("m", "1", "doubles", ("",), "image-b", "DEPRECATED", -1)
        server._loop.call_soon_threadsafe(server.version_registered, other_code, InputType.DOUBLES)
        _heartbeat_until_asked(peer, registration, recorder, seconds=1.5)
        assert not recorder.live, "the old code serves a version registered for other code"
        server._loop.call_soon_threadsafe(server.version_deleted, ("m", "1"))
        same = Model("m", "1", "doubles", ("",), "image-a", "DEPRECATED", 8)    # a new batch size
        server._loop.call_soon_threadsafe(server.version_registered, same, InputType.DOUBLES)
        _heartbeat_until_asked(peer, registration, recorder)
        assert recorder.live, "registered again as it was, the version did not take its replica back"
    finally:
        peer.close(0)
        context.term()
        stop()


def test_a_retired_peer_that_goes_silent_is_forgotten_as_a_silent_replica_is():
    """A half-open connection sends no disconnect: a retired peer, like a replica, is
    forgotten after replica_timeout of silence (it was kept for ever)."""
    port = 27791
    server, recorder, stop = serving(port, replica_timeout=1.0)
    context = zmq.Context()
    peer = context.socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.connect(f"tcp://127.0.0.1:{port}")
    try:
        peer.send_multipart(codec.encode_new_container("m", "1", InputType.DOUBLES))
        wait_for(lambda: recorder.live, 10, "the registration")
        server._loop.call_soon_threadsafe(server.version_deleted, ("m", "1"))
        wait_for(lambda: server._retired, 10, "the replica retired")
        wait_for(lambda: not server._retired, 1.0 + 3 * LIVENESS_CHECK_PERIOD + 2, "the silent peer forgotten")
    finally:
        peer.close(0)
        context.term()
        stop()


def test_a_version_of_an_input_type_we_cannot_read_judges_no_replica():
    """A model hash written by hand with an unknown input type raised in the state follower
    (taken for a lost Redis: the view reloaded, the rest of the changes untold)."""
    from clipper.query_frontend.server import QueryFrontend

    async def check():
        # Made in a running loop, as the frontend process makes it: on Python 3.9 the Redis
        # client's asyncio.Lock needs one, and an earlier asyncio.run left the thread none.
        frontend = QueryFrontend(Config(cache_size=0))
        try:
            frontend._on_model_change(("m", "1"), Model("m", "1", "tensors", ("",), "img", "", -1))
            assert ("m", "1") not in frontend.rpc._registrations      # no replica is refused for it
        finally:
            frontend.rpc.socket.close(0)
            frontend.rpc.context.term()
    asyncio.run(check())
