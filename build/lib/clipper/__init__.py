"""Server side of a Clipper-compatible prediction-serving cluster.

Roles run as ``python -m clipper <role>``: ``query-frontend``, ``management-frontend``,
``model-container`` and ``supervisor`` (the local backend's process keeper).
"""
