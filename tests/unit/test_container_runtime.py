"""Our model container runtime serving two query frontend workers: one model call for the
batches waiting on both, outputs split back, a model error reported to every query."""
import threading
import time

import zmq

from clipper.datatypes import InputType
from clipper.container.runtime import ContainerRuntime
from clipper.rpc import codec

DOUBLES = InputType.DOUBLES


class Worker:
    """A query frontend worker's ROUTER, speaking through our codec."""

    def __init__(self, context):
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self.replica = None

    def receive(self):
        """The next message that is not a heartbeat (answered as the frontend does)."""
        while True:
            assert self.socket.poll(10_000), "the container said nothing"
            identity, *frames = self.socket.recv_multipart()
            message = codec.decode_container_message(frames)
            if not isinstance(message, codec.Heartbeat):
                return identity, message
            kind = codec.HEARTBEAT_KEEPALIVE if identity == self.replica else codec.HEARTBEAT_REQUEST_METADATA
            self.socket.send_multipart([identity, *codec.encode_heartbeat_reply(kind)])

    def register(self):
        self.replica, message = self.receive()
        assert isinstance(message, codec.NewContainer)

    def send(self, msg_id, inputs):
        self.socket.send_multipart([self.replica, *codec.encode_prediction_request(msg_id, DOUBLES, inputs)])

    def outputs(self, msg_id):
        _, message = self.receive()
        assert isinstance(message, codec.PredictionResponse) and message.msg_id == msg_id
        return message.outputs


def test_batches_waiting_on_two_workers_make_one_model_call():
    context = zmq.Context()
    workers = [Worker(context), Worker(context)]
    calls, gate = [], threading.Event()

    def handler(input_type, inputs):
        gate.wait(10)                 # the first call holds the replica while more queue up
        calls.append(list(inputs))
        if b"bad" in inputs:
            raise ValueError("bad input")
        return [b"out:" + item for item in inputs]

    runtime = ContainerRuntime("m", "1", DOUBLES, [w.address for w in workers], handler)
    thread = threading.Thread(target=runtime.serve)
    try:
        thread.start()
        for worker in workers:
            worker.register()
        workers[0].send(1, [b"a"])            # taken at once: the model call waits on the gate
        time.sleep(0.3)
        workers[0].send(2, [b"b", b"c"])
        workers[1].send(7, [b"d"])
        time.sleep(0.3)
        gate.set()
        assert workers[0].outputs(1) == [b"out:a"]
        assert workers[0].outputs(2) == [b"out:b", b"out:c"]
        assert workers[1].outputs(7) == [b"out:d"]
        assert calls == [[b"a"], [b"b", b"c", b"d"]]
        # A model error in a merged call is every query's answer.
        gate.clear()
        workers[0].send(3, [b"x"])
        time.sleep(0.3)
        workers[0].send(4, [b"bad"])
        workers[1].send(8, [b"y"])
        time.sleep(0.3)
        gate.set()
        assert workers[0].outputs(3) == [b"out:x"]
        for worker, msg_id in ((workers[0], 4), (workers[1], 8)):
            (output,) = worker.outputs(msg_id)
            assert output.startswith(codec.ERROR_OUTPUT_PREFIX) and b"ValueError: bad input" in output
    finally:
        runtime.stop()
        gate.set()
        thread.join(5)
        for worker in workers:
            worker.socket.close(0)
        context.term()
    assert not thread.is_alive()


def test_a_model_that_returns_too_few_outputs_fails_every_query_of_the_call():
    """The outputs of a merged call are split back by count: with one missing, no query
    may get another's output."""
    context = zmq.Context()
    worker = Worker(context)
    runtime = ContainerRuntime("m", "1", DOUBLES, [worker.address], lambda kind, inputs: [b"only one"])
    thread = threading.Thread(target=runtime.serve)
    try:
        thread.start()
        worker.register()
        worker.send(1, [b"a", b"b"])
        outputs = worker.outputs(1)
        assert len(outputs) == 2
        assert all(output.startswith(codec.ERROR_OUTPUT_PREFIX) for output in outputs)
        assert b"the model returned 1 outputs for 2 inputs" in outputs[0]
    finally:
        runtime.stop()
        thread.join(5)
        worker.socket.close(0)
        context.term()
    assert not thread.is_alive()
