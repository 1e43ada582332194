"""The coordinator's gRPC side: tensor codec, bearer-token auth, the servicer, server assembly, the client.

Only this package (and the CLI commands that use it) imports grpc; the core it serves is
:class:`ostracon.cluster.deployment.Deployment`.
"""
