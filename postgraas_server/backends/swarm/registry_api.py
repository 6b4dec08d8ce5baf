"""What the swarm backend asks of its registry over the Docker Registry HTTP API V2, for what a
Docker engine cannot do: read the labels of a pushed image, and delete its manifest."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import requests

from ...errors import BackendUnavailable

log = logging.getLogger(__name__)

# What an engine pushes (schema 2, or OCI where the engine stores images in containerd).
MANIFEST_TYPES = ", ".join(
    ["application/vnd.docker.distribution.manifest.v2+json", "application/vnd.oci.image.manifest.v1+json"]
)
# Deleting is off in a registry unless configured (distribution's storage.delete.enabled), and one
# with authentication refuses a request without a token, which this server does not get.
REFUSED_DELETES = frozenset({401, 403, 405})


class RegistryApi:
    """One registry, ``host:port`` as the backend's ``registry`` setting names it. HTTPS first, and
    HTTP where the registry does not speak TLS (an engine's insecure registry), as an engine does."""

    def __init__(self, registry: str, timeout: float) -> None:
        self.registry = registry
        self._timeout = timeout
        self._scheme: str | None = None
        self._lock = threading.Lock()

    def image_labels(self, name: str, digest: str) -> dict[str, str] | None:
        """The labels of the image whose manifest is ``name@digest``; None when there is no such manifest."""
        answer = self._request("GET", f"/v2/{name}/manifests/{digest}", headers={"Accept": MANIFEST_TYPES})
        if answer.status_code == 404:
            return None
        self._expect(answer, 200, f"read the manifest {name}@{digest}")
        config_digest = str((_json(answer).get("config") or {}).get("digest") or "")
        if not config_digest:
            return {}  # no image manifest (an index): nothing of ours
        config = self._request("GET", f"/v2/{name}/blobs/{config_digest}")
        if config.status_code == 404:
            return None
        self._expect(config, 200, f"read the configuration of {name}@{digest}")
        return dict((_json(config).get("config") or {}).get("Labels") or {})

    def delete_manifest(self, name: str, digest: str) -> None:
        """Delete the manifest ``name@digest`` (its tags go with it; its layers stay until the
        registry's garbage collection). One gone already is fine; a registry that refuses deletes
        is logged and left."""
        answer = self._request("DELETE", f"/v2/{name}/manifests/{digest}")
        if answer.status_code in (200, 202, 404):
            return
        if answer.status_code in REFUSED_DELETES:
            log.warning(
                "the registry %s refused to delete %s@%s (HTTP %s): it keeps the template image until it is "
                "deleted there by hand (enable storage.delete in its configuration)",
                self.registry,
                name,
                digest,
                answer.status_code,
            )
            return
        self._expect(answer, 202, f"delete the manifest {name}@{digest}")

    # -- helpers ---------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        with self._lock:
            known = self._scheme
        unreachable: requests.RequestException | None = None
        for scheme in [known] if known else ["https", "http"]:
            try:
                answer = requests.request(method, f"{scheme}://{self.registry}{path}", timeout=self._timeout, **kwargs)
            except requests.ConnectionError as e:  # a TLS handshake refused too
                unreachable = e
                continue
            except requests.RequestException as e:
                raise BackendUnavailable(f"The registry {self.registry} (registry) failed {method} {path}: {e}") from e
            with self._lock:
                self._scheme = scheme
            return answer
        raise BackendUnavailable(
            f"The registry {self.registry} (registry) cannot be reached, so the server could not {method} {path}: "
            f"{unreachable}"
        ) from unreachable

    def _expect(self, answer: requests.Response, status: int, doing: str) -> None:
        if answer.status_code != status:
            raise BackendUnavailable(
                f"The registry {self.registry} (registry) could not {doing}: HTTP {answer.status_code} "
                f"{answer.text[:200]}"
            )


def _json(answer: requests.Response) -> dict[str, Any]:
    try:
        value = json.loads(answer.content)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
