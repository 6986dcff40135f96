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


class MissingDependency(ClipperException, ImportError):
    """An optional part (a backend's SDK, a framework) is not installed; says what to install."""

    def __init__(self, feature, package, extra):
        super().__init__(f"{feature} needs the Python package '{package}', which is not installed: "
                         f"pip install -r requirements-{extra}.txt (from a clone) or "
                         f"pip install 'clipper-revival[{extra}]'")
