class ClipperException(Exception):
    """A Clipper operation failed; the message says why."""

    def __init__(self, msg, *args):
        self.msg = msg
        super().__init__(msg, *args)


class UnconnectedException(ClipperException):
    def __init__(self, *args):
        # ``message`` as well as ``msg``: 0.4.1 set both.
        self.message = ("No connection to Clipper cluster. Call ClipperConnection.connect to connect "
                        "to an existing cluster or ClipperConnnection.start_clipper to create a new one")
        super().__init__(self.message, *args)


class ClusterUnavailable(ClipperException):
    """The management API could not be reached, or answered 503: maybe only for a moment
    (its process or Redis restarting)."""


def stop_command(cluster_name=None):
    """How to stop one cluster from a shell (a clone's example script, or the installed
    command), or (no name) every one on the machine: others' too, so a message about one
    cluster names it."""
    if cluster_name is None:
        return ("python closeClipper.py (`clipper stop` on the command line), which stops every "
                "Clipper cluster of this state directory and Docker engine; --cluster NAME stops one")
    return (f"python closeClipper.py --cluster {cluster_name} (`clipper stop --cluster-name "
            f"{cluster_name}` on the command line)")


class MissingDependency(ClipperException, ImportError):
    """An optional part (a backend's SDK, a framework) is not installed; says what to install."""

    def __init__(self, feature, package, extra):
        super().__init__(f"{feature} needs the Python package '{package}', which is not installed: "
                         f"{install_hint(extra)}")


def install_hint(extra):
    """How to install an optional part. The project is not on PyPI: a name there may be anyone's."""
    return (f"pip install -r requirements-{extra}.txt in a clone of this project, or, where it "
            f"was installed with pip, pip install '<the path or URL it came from>[{extra}]'")
