"""Virtual clusters from definitions (a gridvm extension, ``target_system.clusterdef``).

``POST clusters`` with a definition starts one (201, ``Location`` its URL; a bad key is a
400 naming it, nodes beyond the quotas a 403 ``QUOTA_EXCEEDED``); ``GET clusters[/{id}]``:
its state (STARTING, READY, DEGRADED, SCALING, STOPPING, STOPPED, FAILED) with reason, and
per service its count, bounds and nodes (name, instance, address, state); ``POST
clusters/{id}/actions/scale`` with ``{"Service": name, "Count": n}`` scales a scalable
service (202; 409 while the cluster starts, scales or stops); ``DELETE clusters/{id}`` ends
it (202: it goes STOPPING, then STOPPED).
"""

from __future__ import annotations

from target_system.jobdesc import JobDescriptionError, _check_keys, _int, _str
from tsf.rest.app import Call, RestApp
from tsf.rest.http import Response, link
from tsf.rest.sites import paged_list

SCALE_KEYS = {"Service", "Count"}


def _doc(call: Call, cluster) -> dict:
    doc = cluster.describe()
    doc["_links"] = {"self": link(call.url("clusters", cluster.cluster_id)),
                     "scale": link(call.url("clusters", cluster.cluster_id, "actions",
                                            "scale"), "scale a scalable service"),
                     "instances": link(call.url("instances"), "your instances")}
    return doc


async def create_cluster(call: Call) -> Response:
    factory = call.app.factory
    cluster = factory.clusters.up(call.json("cluster definition"), call.caller,
                                  factory.admission.site)
    return Response.created(call.url("clusters", cluster.cluster_id))


async def list_clusters(call: Call) -> Response:
    clusters = sorted(call.app.factory.clusters.list(call.caller), key=lambda c: c.created)
    return paged_list(call, "clusters", clusters,
                      lambda c: call.url("clusters", c.cluster_id), _doc)


async def get_cluster(call: Call, cluster_id: str) -> Response:
    return Response(json=_doc(call, call.app.factory.clusters.get(cluster_id, call.caller)))


async def scale_cluster(call: Call, cluster_id: str) -> Response:
    doc = call.json("scale request")
    _check_keys("", doc, SCALE_KEYS)
    for key in SCALE_KEYS:
        if key not in doc:
            raise JobDescriptionError(key, "missing")
    keeper = call.app.factory.clusters
    keeper.scale(cluster_id, _str("Service", doc["Service"]),
                 _int("Count", doc["Count"], minimum=0), call.caller)
    return Response(202, json=_doc(call, keeper.get(cluster_id, call.caller)))


async def delete_cluster(call: Call, cluster_id: str) -> Response:
    keeper = call.app.factory.clusters
    keeper.down(cluster_id, call.caller)
    return Response(202, json=_doc(call, keeper.get(cluster_id, call.caller)))


def install(app: RestApp) -> None:
    app.add("POST", "clusters", create_cluster)
    app.add("GET", "clusters", list_clusters)
    app.add("GET", "clusters/{cluster_id}", get_cluster)
    app.add("POST", "clusters/{cluster_id}/actions/scale", scale_cluster)
    app.add("DELETE", "clusters/{cluster_id}", delete_cluster)
