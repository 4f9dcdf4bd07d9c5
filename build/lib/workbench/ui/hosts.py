"""Answer only requests addressed to this app: a Host header check against DNS rebinding.

A page on evil.example can make its own name resolve to 127.0.0.1 after loading; the browser
then sends the page's requests to the app on loopback, as same-origin, with ``Host:
evil.example``. The app has no login on loopback, so the Host header is the one thing that
tells such a request apart: only names that mean this machine (or that the user listed with
``--allowed-host``) are answered; anything else gets 400 before Gradio sees it. Gradio 6 has no
such check of its own. A plain ASGI middleware: no gradio import.
"""

from __future__ import annotations

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
ANY_ADDRESS = ("0.0.0.0", "::", "")


def host_name(header: str) -> str:
    """'example.com' from 'Example.COM:7860', '::1' from '[::1]:7860'; a trailing dot dropped."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0].rstrip(".") if header.count(":") <= 1 else header


def allowed_hosts(bind: str, extra=()) -> list[str] | None:
    """The Host names answered for an app bound to ``bind``; None (no check) for a wildcard bind
    without ``extra``: a LAN address, a container name or a proxy's name cannot be guessed there."""
    extra = [host_name(h) for h in extra if h.strip()]
    if host_name(bind) in ANY_ADDRESS and not extra:
        return None
    return list(dict.fromkeys([*LOOPBACK_NAMES, host_name(bind), *extra]))


class HostCheck:
    """ASGI middleware: 400 for an http or websocket request whose Host is not in ``allowed``."""

    def __init__(self, app, allowed: list[str]):
        self.app, self.allowed = app, set(allowed)

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            headers = dict(scope.get("headers") or [])
            host = host_name(headers.get(b"host", b"").decode("latin-1"))
            if host not in self.allowed:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                body = (b"Invalid Host header: this app answers only requests addressed to "
                        + ", ".join(sorted(self.allowed)).encode() + b" (python launch.py --allowed-host NAME adds one).")
                await send({"type": "http.response.start", "status": 400,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
