"""The web console at ``/app``: the built single-page app (cloud/console/dist), with every unknown
path under /app answered by index.html so that the client's router handles deep links.

The build is made by deploy/install.sh (npm ci + vite build). Without it, /app says how to build it."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "console" / "dist"

# Everything is bundled: the page loads nothing from another origin. ECharts and React set inline
# styles, hence 'unsafe-inline' for styles only.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self' ws: wss:; font-src 'self' data:; object-src 'none'; base-uri 'self'; frame-ancestors 'none'"
)
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}

NOT_BUILT = """<!doctype html><meta charset="utf-8"><title>Pulse console not built</title>
<body style="font-family: sans-serif; max-width: 40em; margin: 4em auto">
<h1>The console is not built</h1>
<p>This Pulse cloud has no console build in <code>{directory}</code>. Run <code>./deploy/install.sh</code> (or
<code>./pulse.sh demo</code>) from the repository, which builds it with npm, then reload this page.</p></body>"""


def mount_console(app: FastAPI, directory: Path | None = None) -> None:
    root = (directory or DEFAULT_DIR).resolve()
    router = APIRouter(include_in_schema=False)

    def index() -> Response:
        page = root / "index.html"
        if not page.is_file():
            return HTMLResponse(NOT_BUILT.format(directory=root), status_code=503, headers=_HEADERS)
        return FileResponse(page, headers={**_HEADERS, "Cache-Control": "no-cache"})

    @router.get("/")
    async def home() -> Response:
        return RedirectResponse("/app/", status_code=307)

    @router.get("/app")
    async def app_root() -> Response:
        return RedirectResponse("/app/", status_code=307)

    @router.get("/app/{path:path}")
    async def app_file(path: str) -> Response:
        if path:
            target = (root / path).resolve()
            if target.is_relative_to(root) and target.is_file():
                # Vite names assets by content hash: they never change under the same name.
                cache = "public, max-age=31536000, immutable" if path.startswith("assets/") else "no-cache"
                return FileResponse(target, headers={**_HEADERS, "Cache-Control": cache})
            if path.startswith("assets/"):
                return Response("no such asset", status_code=404, media_type="text/plain")
        return index()

    app.include_router(router)
