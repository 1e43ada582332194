"""The coordinator end to end on real Ray actors: a state trained on Ray, served warm behind a real gRPC
server on a free loopback port, one exact deletion through ``CoordinatorClient``: bit-exact against a
retrain from scratch, answered by the new model version, and no actor started or restarted."""

from __future__ import annotations

import numpy as np
import pytest

from ostracon.cluster import CoordinatorClient
from ostracon.cluster.coordinator.deployment import Deployment
from ostracon.cluster.execution.plan import load_config_dataset, make_plan
from ostracon.cluster.execution.training import train
from ostracon.cluster.service.server import CoordinatorServer
from ostracon.cluster.storage.ledger import open_ledger

from helpers import SISA, small_config, trainer_ids

TOKEN = "ray-e2e-token"


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_runtime")]


@pytest.fixture(scope="module")
def config():
    return small_config(**SISA).replace(**{"backend.name": "ray"})


@pytest.fixture(scope="module")
def state(tmp_path_factory, config):
    state = tmp_path_factory.mktemp("ray-e2e") / "state"
    train(config, state, progress=False)  # trained on Ray: the state's config.json says backend ray
    return state


def actor_identities(dep) -> dict[int, tuple[str, int]]:
    """(Ray actor id, process id) of every worker actor the deployment holds."""
    backend = dep._live.backend
    pids = backend.pids(sorted(backend.actors))
    return {j: (actor._actor_id.hex(), pids[j]) for j, actor in backend.actors.items()}


def retrain_without(config, ids):
    """A retrain from scratch without ``ids`` on the in-process backend (bit-identical to Ray)."""
    fresh = train(config.replace(**{"backend.name": "local"}), None, progress=False,
                  dataset=load_config_dataset(config).without(ids))
    return fresh.summary


def test_delete_over_grpc_on_ray_is_exact_serves_the_new_version_and_starts_no_actor(state, config):
    ids = trainer_ids(config, 2, seed=91)
    deployment = Deployment(str(state))
    deployment.start()
    server = CoordinatorServer(deployment, host="127.0.0.1", port=0, token=TOKEN)
    server.start()
    server.mark_serving()
    try:
        with CoordinatorClient(server.address, token=TOKEN, timeout=120) as client:
            assert client.health() == "SERVING"
            status = client.status()
            assert status["backend"] == "ray" and len(status["workers"]) == len(make_plan(config).specs)
            version_before = status["model_version"]
            actors_before = actor_identities(deployment)

            op = client.delete(ids, mode="exact")
            assert op["state"] in ("PENDING", "RUNNING") and sorted(op["sample_ids"]) == sorted(ids)
            events = list(client.watch(op["id"]))
            final = events[-1][1]
            assert final["state"] == "SUCCEEDED", final["message"]
            assert final["model_version"] == version_before + 1

            cert = client.certificate(op["id"])
            assert sorted(cert["deleted"]) == sorted(ids)
            assert cert["model_version_after"] == final["model_version"]

            x = make_plan(config).test_features[:7]
            labels, probabilities, version = client.predict(x)
            assert version == final["model_version"]
            assert labels.shape == (7,) and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)

            assert actor_identities(deployment) == actors_before, "the deletion started or restarted an actor"
            assert all(w["alive"] and w["restarts"] == 0 for w in client.status()["workers"])
    finally:
        server.stop()
        deployment.close(drain=True)

    reference = retrain_without(config, ids)
    assert cert["group_digests"] == reference["group_digests"]
    with open_ledger(state, readonly=True) as ledger:
        _, record = ledger.latest_version()
        assert set(ledger.deletions()) == set(ids)
    assert record.group_digests == reference["group_digests"]
    assert record.worker_digests == reference["worker_digests"]
