"""Serving: the gRPC/REST service, model store, workers, limits, auth, client."""
