"""The coordinator: a trained state directory served warm (:mod:`.deployment`), its journal of deletion
operations (:mod:`.journal`) and what it reports about the cluster (:mod:`.status`)."""
