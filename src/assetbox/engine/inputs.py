"""Fetching input images from http(s) URLs, safely.

A URL is refused unless its scheme is http or https and every address its host resolves to is a
public one: loopback, private, link-local (cloud metadata at 169.254.169.254), multicast and
reserved addresses are refused unless ``ASSETBOX_ALLOW_PRIVATE_URLS`` is set, so that the service
cannot be used to reach machines behind it (server-side request forgery). Redirects are followed
by hand, each hop checked the same way. The body is read up to the image byte limit.

Not covered: a host whose DNS answer changes between the check and the connection (rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urljoin, urlsplit

import httpx

from assetbox.config import Settings
from assetbox.errors import ImageTooLarge, InvalidInput

MAX_REDIRECTS = 3


def check_url(url: str, settings: Settings, *, field: str = "image") -> None:
    """Raises InvalidInput when `url` may not be fetched (scheme, or where it points)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(
            f"`{field}` URLs must be http(s) with a host, not {parts.scheme or 'no'} scheme",
            field=field,
        )
    if settings.allow_private_urls:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 0, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise InvalidInput(f"`{field}`: cannot resolve {parts.hostname}", field=field) from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global or address.is_multicast:
            raise InvalidInput(
                f"`{field}` points at {address}, a non-public address; such URLs are refused "
                "(ASSETBOX_ALLOW_PRIVATE_URLS allows them)",
                field=field,
            )


def fetch_url(url: str, settings: Settings, *, field: str = "image") -> bytes:
    """The body of an http(s) URL, checked as above and limited to ``max_image_bytes``.

    Raises:
        InvalidInput: a refused URL, a failed request or a non-2xx answer.
        ImageTooLarge: a body larger than the limit.
    """
    limit = settings.max_image_bytes
    with httpx.Client(timeout=settings.url_timeout_s, follow_redirects=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            check_url(url, settings, field=field)
            try:
                with client.stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if not response.is_success:
                        raise InvalidInput(
                            f"`{field}`: {url} answered {response.status_code}", field=field
                        )
                    chunks, size = [], 0
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        if size > limit:
                            raise ImageTooLarge(
                                f"`{field}` at {url} is over {limit} bytes", field=field
                            )
                        chunks.append(chunk)
                    return b"".join(chunks)
            except httpx.HTTPError as exc:
                raise InvalidInput(f"`{field}`: fetching {url} failed: {exc}", field=field) from exc
    raise InvalidInput(f"`{field}`: more than {MAX_REDIRECTS} redirects", field=field)
