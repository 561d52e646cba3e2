"""Media in requests: ``data:`` URLs, allow-listed remote URLs and ``file://`` under one folder,
turned into polymodal parts with every limit checked before decoding.

Remote fetching follows what vLLM does to stay safe: nothing is fetched unless its domain is on the
allow-list; the host's addresses are resolved first and private, loopback, link-local, reserved and
multicast destinations are refused (unless the operator allows private addresses); redirects are
not followed; the read stops at the byte limit and at a timeout.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from polymodal.content import Audio, Image, Video
from polymodal.content.limits import MediaLimits
from polymodal.errors import PolymodalError
from polymodal.serve.config import ServeConfig
from polymodal.serve.errors import APIError, from_polymodal

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)


def decode_base64(data: str, param: str, max_bytes: int) -> bytes:
    """Strict base64 (whitespace tolerated): a bad character or padding is a 400 naming ``param``."""
    if not isinstance(data, str):
        raise APIError(400, f"{param} must be a base64 string", param=param)
    if len(data) * 3 // 4 > max_bytes:
        raise APIError(
            413, f"{param} holds more than the {max_bytes}-byte limit", param=param, code="request_too_large"
        )
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{param} is not valid base64", param=param, code="invalid_base64") from None


class MediaReader:
    """Reads the bytes a media URL points to, under a server's rules."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.root = Path(config.file_root).resolve() if config.file_root else None

    def read(self, url: str, param: str, expect: str) -> tuple[bytes, str | None]:
        """(bytes, declared MIME type or None) of ``url``; ``expect`` is "image", "audio" or "video"."""
        if not isinstance(url, str) or not url:
            raise APIError(400, f"{param} must be a non-empty URL string", param=param)
        if url[:5].lower() == "data:":
            return self._data_url(url, param, expect)
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme in ("http", "https"):
            return self._fetch(url, param), None
        if scheme == "file":
            return self._file(url, param), None
        raise APIError(400, f"{param}: unsupported URL scheme {scheme or url[:16]!r} (use a data: URL)", param=param)

    def _data_url(self, url: str, param: str, expect: str) -> tuple[bytes, str | None]:
        match = _DATA_URL.match(url)
        if not match:
            raise APIError(400, f"{param}: malformed data URL (expected data:<type>;base64,<data>)", param=param)
        if not match.group("b64"):
            raise APIError(400, f"{param}: only base64 data URLs are supported", param=param)
        mime = (match.group("mime") or "").lower() or None
        if mime and mime.split("/")[0] not in (expect, "application"):
            raise APIError(400, f"{param}: a {expect} part cannot hold {mime}", param=param, code="invalid_mime_type")
        return decode_base64(url[match.end() :], param, self.config.max_request_bytes), mime

    def _file(self, url: str, param: str) -> bytes:
        if self.root is None:
            raise APIError(400, f"{param}: file:// URLs are not allowed on this server", param=param)
        path = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).resolve()
        if not path.is_relative_to(self.root):
            raise APIError(400, f"{param}: file:// URLs must point under the server's media folder", param=param)
        if not path.is_file():
            raise APIError(400, f"{param}: no such file", param=param)
        if path.stat().st_size > self.config.max_request_bytes:
            raise APIError(413, f"{param}: the file exceeds {self.config.max_request_bytes} bytes", param=param)
        return path.read_bytes()

    def _fetch(self, url: str, param: str) -> bytes:
        parts = urllib.parse.urlsplit(url)
        host = (parts.hostname or "").lower()
        allowed = any(host == d or host.endswith("." + d) for d in self.config.allowed_domains)
        if not allowed:
            raise APIError(400, f"{param}: fetching from {host or url!r} is not allowed (the server's allowed_domains "
                                f"list does not hold it; send the media as a data: URL)", param=param)  # fmt: skip
        try:
            infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80))
        except (socket.gaierror, UnicodeError):
            raise APIError(400, f"{param}: cannot resolve {host!r}", param=param) from None
        for info in infos:
            address = ipaddress.ip_address(info[4][0])
            private = address.is_private or address.is_loopback or address.is_link_local or address.is_reserved
            if (private or address.is_multicast or address.is_unspecified) and not self.config.allow_private_addresses:
                raise APIError(400, f"{param}: {host!r} resolves to a private or local address", param=param)
        opener = urllib.request.build_opener(_NoRedirect)
        limit = self.config.max_request_bytes
        try:
            with opener.open(urllib.request.Request(url, method="GET"), timeout=self.config.fetch_timeout_s) as reply:
                data = reply.read(limit + 1)
        except urllib.error.HTTPError as exc:
            raise APIError(400, f"{param}: fetching {url} answered HTTP {exc.code}", param=param) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise APIError(400, f"{param}: fetching {url} failed ({exc})", param=param) from None
        if len(data) > limit:
            raise APIError(413, f"{param}: {url} holds more than {limit} bytes", param=param)
        return data


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201
        raise urllib.error.HTTPError(req.full_url, code, "redirects are not followed", headers, fp)


def decode_media(data: bytes, kind: str, param: str, limits: MediaLimits, *, detail: str = "auto",
                 fps: float = 1.0, max_frames: int | None = None) -> Image | Audio | Video:  # fmt: skip
    """The part ``data`` holds; what cannot be decoded is a 422 (413 over a limit) naming ``param``."""
    try:
        if kind == "image":
            return Image.from_bytes(data, name=param, limits=limits).with_detail(detail)
        if kind == "audio":
            return Audio.from_bytes(data, name=param, limits=limits)
        return Video.from_bytes(data, name=param, fps=fps, max_frames=max_frames, limits=limits)
    except PolymodalError as exc:
        raise from_polymodal(exc, param) from None
