"""The base resource (``GET BASE``: who am I, what server, where is everything) and
``GET BASE/token``."""

from __future__ import annotations

import time

from base.reasons import Reason
from tsf.rest.app import Call, RestApp
from tsf.rest.http import TEXT, Response, RestError, int_param, iso, link, str_param

SERVER_VERSION = "10.2.0"  #: what pyunicore's server_version_info() parses (dotted integers)


async def get_base(call: Call) -> Response:
    principal, app = call.principal, call.app
    user = principal.user
    roles = ["anonymous"] if user is None else sorted({user.role, "user"})
    client = {
        "dn": user.distinguished_name if user else None,
        "role": {"selected": principal.role, "availableRoles": roles},
        "authenticationMethod": principal.method,
    }
    if user is not None:
        groups = list(user.groups)
        client["xlogin"] = {
            "UID": user.name, "availableUIDs": [user.name],
            "group": groups[0] if groups else "", "availableGroups": groups,
            "selectedSupplementaryGroups": groups[1:],
        }
        client["vos"] = list(user.vos)
    hosts = app.factory.vmm
    down = hosts.status_message()
    server = {
        "siteName": app.site_name, "version": SERVER_VERSION,
        "upSince": iso(app.started), "currentTime": iso(time.time()),
        "jobSubmission": {"enabled": True, "message": "" if not down else
                          f"not every hypervisor is reachable ({down}): new VMs wait for "
                          "their host or go to another"},
        "externalConnections": {}, "trustedCAs": [], "trustedSAMLIssuers": [],
        "gridvm": {"software": "gridvm", "description": "jobs run in VMs booted from an "
                                                        "image repository",
                   "hypervisor": hosts.status().to_dict() | {
                       "since": iso(hosts.status().since)}},
    }
    links = {
        "self": link(call.base, "this resource"),
        "jobs": link(call.url("jobs"), "your jobs"),
        "storages": link(call.url("storages"), "storages"),
        "factories": link(call.url("factories"), "target system factories"),
        "sites": link(call.url("sites"), "your target systems"),
        "token": link(call.url("token"), "issue an authentication token"),
        "instances": link(call.url("instances"), "gridvm: your VM instances"),
        "images": link(call.url("images"), "gridvm: the image catalogue you may use"),
    }
    return Response(json={"client": client, "server": server, "_links": links})


async def get_token(call: Call) -> Response:
    principal = call.principal
    call.caller  # noqa: B018 (401 for the anonymous caller)
    if principal.method == "BEARER" and not principal.token_renewable:
        raise RestError(403, "this token is not renewable: authenticate with a password or "
                             "a renewable token to get a new one", Reason.NOT_AUTHORIZED)
    lifetime = int_param(call.args, "lifetime", 0, 0, 10 ** 8)
    renewable = (str_param(call.args, "renewable") or "false").lower() == "true"
    token = call.app.tokens.issue(principal.user.name, lifetime, renewable)
    return Response(data=token.encode(), content_type=TEXT)


def install(app: RestApp) -> None:
    app.add("GET", "", get_base)
    app.add("GET", "token", get_token)
