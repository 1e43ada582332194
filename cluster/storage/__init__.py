"""Durable state (layer 2, docs/design.md): the ledger, the state directory and its lock,
checkpoints, the typed records they hold, and the files derived from them. No Ray, no gRPC, no
training: what is on disk and how it is written (``ostracon.nodes.durable`` is the one atomic write)."""
