"""An image tag's digest, asked of its registry (the Docker Registry HTTP API v2 / OCI distribution API).

`target.resolve_image` names a sweep's image by the digest its tag points at now, so run ids (which hash the image
string) change when other code is pushed under the same tag, and the pods run exactly that manifest. The digest is
the registry's `Docker-Content-Digest` of the manifest the tag names — an index for a multi-platform image — as
`docker push`, `podman push --digestfile` and `crane digest` print it. Anonymous requests only: distillctl reads no
registry credentials, so a registry that asks for them is reported, not answered.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
import urllib.error
import urllib.parse
import urllib.request

# Every manifest type a tag can name, so that the registry answers with the manifest as pushed (an index stays an
# index; without the OCI types a registry may refuse an OCI manifest as not acceptable).
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
DIGEST_HEADER = "Docker-Content-Digest"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
TIMEOUT_SECONDS = 10.0


class ImageNotResolved(Exception):
    """The tag's digest could not be read: what happened, and what to do instead."""

    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.message = message
        self.hint = hint


@dataclasses.dataclass(frozen=True)
class ImageName:
    """An image reference split as registries read it: `host[:port]/path[:tag][@digest]`."""

    name: str  # the reference as written, without tag and digest (what a resolved reference keeps)
    registry: str  # host[:port]; docker.io when the name has none
    repository: str  # library/<name> for an official Docker Hub image
    tag: str | None
    digest: str | None

    def with_digest(self, digest: str) -> str:
        return f"{self.name}@{digest}"


def parse_image(image: str) -> ImageName:
    """Split `image` as Docker does: the first path component is a registry when it has a `.` or a `:`, or is
    `localhost`; otherwise the image is on Docker Hub. No tag means `latest`, as `docker pull` takes it."""
    rest, _, digest = image.partition("@")
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    tag = None
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
    first, sep, path = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, path
    else:
        registry, repository = DOCKER_HUB, rest if "/" in rest else f"library/{rest}"
    return ImageName(rest, registry, repository, tag if tag or digest else "latest", digest or None)


def manifest_url(image: ImageName) -> str:
    """The manifest's URL: plain HTTP for a registry on loopback (as Docker trusts `localhost` and 127.0.0.0/8
    without TLS), HTTPS for every other."""
    host = DOCKER_HUB_API if image.registry == DOCKER_HUB else image.registry
    scheme = "http" if _loopback(host) else "https"
    return f"{scheme}://{host}/v2/{image.repository}/manifests/{image.digest or image.tag}"


def resolve_digest(image: str, timeout: float = TIMEOUT_SECONDS) -> str:
    """The digest (`sha256:<64 hex>`) of the manifest `image`'s tag names now. Raises ImageNotResolved when the
    registry cannot be reached, asks for credentials, has no such tag, or answers without a digest."""
    name = parse_image(image)
    if name.digest:
        return name.digest
    url = manifest_url(name)
    headers = {"Accept": ", ".join(MANIFEST_TYPES)}
    # A loopback registry is never reached through a proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({})) if url.startswith("http:") else None
    open_url = opener.open if opener else urllib.request.urlopen
    try:
        with open_url(urllib.request.Request(url, headers=headers, method="HEAD"), timeout=timeout) as answer:
            digest = answer.headers.get(DIGEST_HEADER, "")
        if not digest:  # the header is optional on HEAD: the digest is the sha256 of the manifest's bytes
            with open_url(urllib.request.Request(url, headers=headers), timeout=timeout) as answer:
                digest = answer.headers.get(DIGEST_HEADER) or "sha256:" + hashlib.sha256(answer.read()).hexdigest()
    except urllib.error.HTTPError as e:
        raise _http_error(image, name, e.code) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ImageNotResolved(
            f"cannot reach the registry {name.registry} to resolve {image!r}: {reason}",
            "check the network (and that the registry is up), or name the image by digest (repository@sha256:...)",
        ) from None
    if not DIGEST.fullmatch(digest):
        raise ImageNotResolved(
            f"the registry {name.registry} answered {digest!r} for {image!r}, not a sha256 digest",
            "name the image by digest (repository@sha256:...), as `crane digest` prints it",
        )
    return digest


def _http_error(image: str, name: ImageName, status: int) -> ImageNotResolved:
    if status in (401, 403):
        return ImageNotResolved(
            f"the registry {name.registry} asks for credentials to read {image!r} (HTTP {status}); distillctl "
            "resolves tags anonymously",
            "name the image by digest: `crane digest <image>` or `gcloud artifacts docker images describe <image> "
            "--format='value(image_summary.digest)'` prints it",
        )
    if status == 404:
        return ImageNotResolved(
            f"the registry {name.registry} has no tag {name.tag!r} in {name.repository!r} (HTTP 404)",
            "push the image first, or fix target.image",
        )
    return ImageNotResolved(
        f"the registry {name.registry} answered HTTP {status} for the manifest of {image!r}",
        "name the image by digest (repository@sha256:...)",
    )


def _loopback(host: str) -> bool:
    hostname = urllib.parse.urlsplit(f"//{host}").hostname or ""
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False
