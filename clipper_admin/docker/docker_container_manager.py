"""Docker backend: not built yet. It keeps 0.4.1's name so that imports work."""
from clipper_admin.exceptions import ClipperException


class DockerContainerManager(object):
    def __init__(self, *args, **kwargs):
        raise ClipperException("The Docker backend is not available yet in this release; "
                               "use LocalContainerManager (the default of the example scripts)")
