"""A model container as a user might write one for Clipper: it speaks RPC v3 (frames from
clipper_rpc.py, written from the protocol, not from our runtime) and, as Clipper's own
containers do, learns everything from CLIPPER_* environment variables. It answers a batch
of doubles with "<name>:<version>:<sum>" per input, so a test sees the environment arrive.
"""
import os
import struct

import zmq

import clipper_rpc as rpc

HEARTBEAT_SECONDS = 5


def main():
    name, version = os.environ["CLIPPER_MODEL_NAME"], os.environ["CLIPPER_MODEL_VERSION"]
    input_type = os.environ.get("CLIPPER_INPUT_TYPE", "doubles")
    address = f"tcp://{os.environ.get('CLIPPER_IP', '127.0.0.1')}:{os.environ.get('CLIPPER_PORT', '7000')}"
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.connect(address)
    print(f"{name}:{version} ({input_type}) connecting to {address}", flush=True)

    def answer(message):
        sums = [sum(struct.unpack("<%dd" % (len(i) // 8), i)) for i in message["inputs"]]
        return [f"{name}:{version}:{total}".encode() for total in sums]
    rpc.serve(socket, rpc.new_container(name, version, input_type), answer,
              heartbeat_seconds=HEARTBEAT_SECONDS)


if __name__ == "__main__":
    main()
