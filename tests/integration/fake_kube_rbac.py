"""RBAC for the pods' ServiceAccount tokens in the fake API server: a request made with a token from
`FakeKube.service_account_token` is allowed only by the Roles its ServiceAccount is bound to in the store, as the
API server's RBAC authorizer decides (rules by API group, resource, verb and, when listed, resource name); anything
else is refused 403 Forbidden with the real message. The user's own token (the kubeconfig's) is not checked here."""

from __future__ import annotations

from typing import Any

from tests.integration.fake_kube_http import Reply

ROLES = ("rbac.authorization.k8s.io/v1", "roles")
BINDINGS = ("rbac.authorization.k8s.io/v1", "rolebindings")


def _allows(rule: dict[str, Any], group: str, plural: str, verb: str, name: str) -> bool:
    def has(values: list[str] | None, value: str) -> bool:
        return bool(values) and ("*" in values or value in values)  # type: ignore[operator]

    names = rule.get("resourceNames") or []
    return (has(rule.get("apiGroups"), group) and has(rule.get("resources"), plural) and has(rule.get("verbs"), verb)
            and (not names or name in names))


def roles_of(objects: dict[tuple[str, str, str], dict[str, dict[str, Any]]], ns: str, account: str
             ) -> list[dict[str, Any]]:
    """The Roles in `ns` bound to ServiceAccount `ns/account`."""
    bound = [b for b in objects.get((*BINDINGS, ns), {}).values()
             if any(s.get("kind") == "ServiceAccount" and s.get("name") == account and s.get("namespace", ns) == ns
                    for s in b.get("subjects") or [])
             and b["roleRef"].get("kind") == "Role"]
    roles = objects.get((*ROLES, ns), {})
    return [roles[b["roleRef"]["name"]] for b in bound if b["roleRef"]["name"] in roles]


def authorize(objects: dict[tuple[str, str, str], dict[str, dict[str, Any]]], account: tuple[str, str], gv: str,
              ns: str, plural: str, verb: str, name: str) -> None:
    """Raise the API server's 403 unless a Role bound to ServiceAccount `account` (namespace, name) allows it."""
    sa_ns, sa_name = account
    group = gv.rpartition("/")[0]
    if ns == sa_ns and any(_allows(rule, group, plural, verb, name) for role in roles_of(objects, ns, sa_name)
                           for rule in role.get("rules") or []):
        return
    resource = f"{plural}.{group}" if group else plural
    user = f"system:serviceaccount:{sa_ns}:{sa_name}"
    subject = f'{resource} "{name}"' if name else resource
    raise Reply(403, "Forbidden", f'{subject} is forbidden: User "{user}" cannot {verb} resource "{plural}" in API '
                f'group "{group}" in the namespace "{ns}"', {"name": name, "group": group, "kind": plural})
