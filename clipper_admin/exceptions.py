class ClipperException(Exception):
    """A Clipper operation failed; the message says why."""

    def __init__(self, msg, *args):
        self.msg = msg
        super().__init__(msg, *args)


class UnconnectedException(ClipperException):
    def __init__(self, *args):
        super().__init__(
            "No connection to Clipper cluster. Call ClipperConnection.connect to connect to an "
            "existing cluster or ClipperConnnection.start_clipper to create a new one", *args)
