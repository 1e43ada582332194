"""``ostracon.v1``: the coordinator's public gRPC API (generated stubs beside their ``.proto`` sources)."""
