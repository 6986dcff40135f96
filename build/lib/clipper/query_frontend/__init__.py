"""Query frontend: REST predictions on port 1337, model containers over ZeroMQ on port 7000."""
