"""Who may connect to the RPC port: ZeroMQ CURVE, with a ZAP handler that admits one key.

A cluster that has an admin token, or listens beyond loopback, gets two CURVE key pairs
when it starts: the query frontend's and its containers'. The frontend encrypts its RPC
port with its own pair and, through ZAP, accepts only peers that prove they hold the
containers' secret key; a container checks that it talks to the frontend's public key. The
keys travel as Config fields, so through the environment of each process (never a command
line). Without keys the port is open, as Clipper's is: real Clipper containers cannot
authenticate, so a cluster serving them chooses ``rpc_auth="open"``.
"""
import hmac
import logging
from typing import TYPE_CHECKING, Dict

from clipper.config import is_loopback

# pyzmq is imported where it is used: a client that starts an open cluster, or a replica
# without keys, does not load it for this module (its ZAP thread alone pulls in asyncio).
if TYPE_CHECKING:
    import zmq
    from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("clipper.rpc.auth")

AUTO, CURVE, OPEN = "auto", "curve", "open"
MODES = (AUTO, CURVE, OPEN)
# The Config fields a model container needs.
CONTAINER_KEY_FIELDS = ("rpc_server_public_key", "rpc_client_secret_key")


def cluster_keys(mode: str, host: str, admin_token: str) -> Dict[str, str]:
    """The Config fields that secure a new cluster's RPC port ({} leaves it open)."""
    if mode not in MODES:
        raise ValueError(f"rpc_auth must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == OPEN or (mode == AUTO and not admin_token and is_loopback(host)):
        return {}
    import zmq
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    return {"rpc_server_secret_key": server_secret.decode(),
            "rpc_client_public_key": client_public.decode(),
            "rpc_server_public_key": server_public.decode(),
            "rpc_client_secret_key": client_secret.decode()}


class _OneKey:
    """ZAP credentials check: the containers' public key, and no other."""

    def __init__(self, allowed_public_key: str):
        self.allowed = allowed_public_key.encode()

    def callback(self, domain: str, key: bytes) -> bool:
        if hmac.compare_digest(key, self.allowed):
            return True
        log.warning("refused an RPC peer that did not show the cluster's container key")
        return False


def require_curve(context: "zmq.Context", socket: "zmq.Socket", secret_key: str,
                  allowed_public_key: str) -> "ThreadAuthenticator":
    """Make ``socket`` (not yet bound) a CURVE server that admits only ``allowed_public_key``.
    Returns the ZAP handler, to ``stop()`` before the context is terminated."""
    from zmq.auth.thread import ThreadAuthenticator
    authenticator = ThreadAuthenticator(context, log=log)
    authenticator.start()
    authenticator.configure_curve_callback("*", _OneKey(allowed_public_key))
    socket.curve_server = True
    socket.curve_secretkey = secret_key.encode()
    return authenticator


def present_curve(socket: "zmq.Socket", server_public_key: str, secret_key: str) -> None:
    """Make ``socket`` (not yet connected) a CURVE client of ``server_public_key``."""
    import zmq
    socket.curve_serverkey = server_public_key.encode()
    socket.curve_secretkey = secret_key.encode()
    socket.curve_publickey = zmq.curve_public(secret_key.encode())
