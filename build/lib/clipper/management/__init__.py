"""Management frontend (port 1338): the /admin REST API, the only writer of cluster state."""
