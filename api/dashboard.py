"""The dashboard: one HTML page served by the API, its script and style, and plotly.js.

Nothing comes from a CDN at run time: plotly.js is the copy Plotly's Python
package ships for offline use, served gzipped under a URL that names its
version so browsers may cache it for good. The page only reads the public
read API (``/api/...``), so it shows exactly what any API client would see.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

import plotly
from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from api.errors import NotFound
from schemas.errors import TracestreamError

router = APIRouter(include_in_schema=False)

_PACKAGE = files("api")
_STATIC_TYPES = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
_YEAR_S = 365 * 24 * 3600


class DashboardAssetMissing(TracestreamError):
    """A file of the dashboard is not installed (api/static or api/templates missing from the package data)."""


@dataclass(frozen=True)
class Asset:
    """Bytes to serve, their gzipped form and a strong ETag."""

    body: bytes
    gzipped: bytes
    etag: str
    media_type: str

    @classmethod
    def of(cls, body: bytes, media_type: str) -> Asset:
        return cls(body, gzip.compress(body, compresslevel=6, mtime=0),
                   f'"{hashlib.sha256(body).hexdigest()[:32]}"', media_type)


def _read(folder: str, name: str) -> bytes:
    try:
        return (_PACKAGE / folder / name).read_bytes()
    except FileNotFoundError as exc:
        raise DashboardAssetMissing(
            f"api/{folder}/{name} is not installed; reinstall tracestream with its package data "
            "(pyproject: [tool.setuptools.package-data] api = [\"static/*\", \"templates/*\"])"
        ) from exc


@cache
def _static(name: str) -> Asset:
    return Asset.of(_read("static", name), _STATIC_TYPES[name])


@cache
def _plotly_js() -> Asset:
    from plotly.offline import get_plotlyjs

    return Asset.of(get_plotlyjs().encode(), "text/javascript; charset=utf-8")


@cache
def _page() -> Asset:
    """The page, with asset URLs that change whenever the assets do (so caches never serve a stale script)."""
    version = hashlib.sha256(b"".join(_static(name).body for name in sorted(_STATIC_TYPES))).hexdigest()[:12]
    html = (_read("templates", "dashboard.html").decode()
            .replace("{{asset_version}}", version)
            .replace("{{plotly_version}}", plotly.__version__))
    return Asset.of(html.encode(), "text/html; charset=utf-8")


def _serve(request: Request, asset: Asset, cache_control: str) -> Response:
    headers = {"ETag": asset.etag, "Cache-Control": cache_control, "Vary": "Accept-Encoding"}
    if asset.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    if "gzip" in request.headers.get("accept-encoding", ""):
        return Response(asset.gzipped, media_type=asset.media_type, headers={**headers, "Content-Encoding": "gzip"})
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/dashboard", status_code=307)


@router.get("/dashboard")
def dashboard(request: Request) -> Response:
    """The page itself; revalidated on every load, so a new deployment shows at once."""
    return _serve(request, _page(), "no-cache")


@router.get("/dashboard/static/plotly.min.js")
def plotly_js(request: Request) -> Response:
    """plotly.js from the installed plotly package; the page's URL names the version, so it never changes."""
    return _serve(request, _plotly_js(), f"public, max-age={_YEAR_S}, immutable")


@router.get("/dashboard/static/{name}")
def static(name: str, request: Request) -> Response:
    if name not in _STATIC_TYPES:
        raise NotFound(f"no dashboard asset named {name!r}; there are {sorted(_STATIC_TYPES)}")
    return _serve(request, _static(name), f"public, max-age={_YEAR_S}, immutable")
