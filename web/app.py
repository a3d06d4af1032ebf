"""The review workbench app: routes, access token, sessions and CSRF; the pages come from
:mod:`idweave.linkage.views` and the charts from :mod:`idweave.web.svg`.

Security, in order of the request:

* every request needs the access token (printed in the URL by ``idweave serve``): once as
  ``?token=`` (then kept in an HttpOnly, SameSite=Strict cookie, and the URL is cleaned
  by a redirect), else 403;
* a session (cookie) carries a CSRF token that every POST must send back in its form, else
  403, and the author's name given at sign-in (unless the server has one: ``--author``);
* Jinja2 autoescapes every value; the charts escape their labels; the pages are sent with
  a Content-Security-Policy that allows only this server's own scripts and styles.

Store access: a page's library calls share one read-only opening of the store
(:meth:`Store.reading`), and the review queue is kept in the store
(:func:`idweave.linkage.queue.store_queue`, made current whenever the store file changed);
one lock serialises the calls of this process (DuckDB refuses a read-only and a read-write
connection to one file in one process), which also makes
:func:`idweave.linkage.views.decide`'s version check and decision atomic among stewards. A store held by a running ``idweave link`` gives a "a run
is writing" page (503) that retries by itself.

>>> app = make_app("fixtures/tiny/project.yaml", token="t0k")
>>> sorted(r.path for r in app.routes if hasattr(r, "methods") and "POST" in r.methods)
['/decide/{action}', '/signin']
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from idweave.linkage import queue as queue_mod
from idweave.linkage import review, views
from idweave.linkage.errors import IdweaveError, StoreBusyError
from idweave.linkage.graph import Store
from idweave.linkage.project import resolve_project
from idweave.linkage.project import Project
from idweave.web import svg

__all__ = ["make_app", "serve", "workbench_url", "LOOPBACK", "BackgroundServer"]

STATIC = Path(__file__).parent / "static"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def workbench_url(host: str, port: int, token: str) -> str:
    """The URL ``idweave serve`` prints: the address with the access token.

    >>> workbench_url("127.0.0.1", 8765, "abc")
    'http://127.0.0.1:8765/?token=abc'
    """
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/?token={token}"


class _Busy(Exception):
    pass


class _State:
    """What the app keeps between requests: the project, the lock, the sessions, the model
    page's sweep of the store's current state, and the store state at which the stored
    review queue was last made current."""

    def __init__(self, project: Project, token: str, author: str | None, truth: str | None):
        self.project = project
        self.token = token
        self.author = author
        self.truth = truth
        self.lock = threading.RLock()
        self.sessions: dict[str, dict[str, str | None]] = {}
        self._cache: dict[str, Any] = {}
        self.queue_state: str | None = None

    def cached(self, name: str, state: str, compute: Callable[[], Any]) -> Any:
        key = (name, state)
        if key not in self._cache:
            for k in [k for k in self._cache if k[0] == name]:
                del self._cache[k]
            self._cache[key] = compute()
        return self._cache[key]

    def ensure_queue(self) -> None:
        """Keep the review queue in the store current (:func:`queue.store_queue`: built once
        per run, then only what decisions changed is found again), checked whenever the
        store file changed; a run holding the store leaves it to the readers to find."""
        now = views.store_state(self.project)
        if now == self.queue_state:
            return
        try:
            queue_mod.store_queue(self.project)
        except StoreBusyError:
            return
        self.queue_state = views.store_state(self.project)


def _env() -> Environment:
    env = Environment(loader=PackageLoader("idweave.web", "templates"),
                      autoescape=select_autoescape(["html", "xml"], default=True))
    env.filters["p"] = lambda v: "" if v is None else f"{float(v):.4f}"
    env.filters["w"] = lambda v: "" if v is None else f"{float(v):+.2f}"
    env.filters["reason"] = lambda code: code.replace("_", " ")
    env.globals["REASONS"] = review.REASONS
    return env


def make_app(project: Project | str | Path | Mapping[str, Any], *, token: str | None = None,
             author: str | None = None, truth: str | None = None) -> Starlette:
    """The workbench as an ASGI app over ``project``'s store. ``token`` is the access token
    (random if not given; the app's ``state.token``), ``author`` the name every decision
    is recorded with (otherwise each steward signs in), ``truth`` a truth column of the
    sources for the model page's threshold sweep. See the module docstring."""
    proj = resolve_project(project)
    st = _State(proj, token or secrets.token_urlsafe(24), author, truth)
    env = _env()

    def page(request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        sess = _session(request)
        html = env.get_template(template).render(
            request=request, csrf=sess["csrf"], author=st.author or sess.get("author"), project=proj,
            fixed_author=st.author is not None, **ctx)
        return HTMLResponse(html, status_code=status)

    def _session(request: Request) -> dict[str, str | None]:
        return request.scope.get("idweave_session") or {"csrf": "", "author": None}

    async def call(fn: Callable[[], Any]) -> Any:
        def locked() -> Any:
            with st.lock:
                return fn()
        return await run_in_threadpool(locked)

    async def read(fn: Callable[[], Any]) -> Any:
        """``fn`` under the lock, with the stored queue current and one read-only opening of
        the store shared by every library call it makes (one state of the store per page)."""
        def reading() -> Any:
            st.ensure_queue()
            with Store.reading(proj.store):
                return fn()
        return await call(reading)

    def state() -> str:
        return views.store_state(proj)

    # ------------------------------------------------------------------ pages
    async def queue_page(request: Request) -> Response:
        q = request.query_params

        def num(name: str) -> int | None:
            v = q.get(name, "").strip()
            return int(v) if v.isdigit() else None

        filters = {"reason": q.get("reason") or None, "source": q.get("source") or None,
                   "min_size": num("min_size"), "max_size": num("max_size"), "search": q.get("q") or None}
        limit = num("limit") or 50

        qp = await read(lambda: views.queue_page(proj, limit=limit, **filters))
        rows = [{"row": r, "spark": Markup(svg.sparkline(r.probabilities, threshold=qp.threshold))} for r in qp.rows]
        return page(request, "queue.html", qp=qp, rows=rows, filters=filters, limit=limit, title="Review queue")

    async def entity_page(request: Request) -> Response:
        eid = request.path_params["entity_id"]
        q = request.query_params
        link = q.get("link")
        other = q.get("other") or None

        def build() -> dict[str, Any]:
            # The open queue only: an entity a decision reviewed shows no queue reason or
            # suggestion until its records change.
            sq = views.current_queue(proj)
            ep = views.entity_page(proj, eid, link=int(link) if link and link.isdigit() else None, open_only=True,
                                   queue=sq)
            other_view = review.show(proj, other, nearby=0) if other else None
            prv, nxt = views.queue_neighbours(proj, ep.view.entity_id, queue=sq)
            other_version = views.entity_version(proj, other_view.entity_id) if other_view else None
            return {"ep": ep, "other_view": other_view, "next_item": nxt, "prev_item": prv,
                    "other_version": other_version}

        ctx = await read(build)
        ep: views.EntityPage = ctx["ep"]
        if ep.redirected_from:
            return RedirectResponse(f"/entity/{ep.view.entity_id}", status_code=303)
        labels = [f"{s}:{r}" for s, r in ep.view.records.select("source", "record_id").iter_rows()]
        index = {tuple(lbl.split(":", 1)): i for i, lbl in enumerate(labels)}
        glinks = [(index[tuple(ln["left"])], index[tuple(ln["right"])], ln["match_probability"]) for ln in ep.links
                  if tuple(ln["left"]) in index and tuple(ln["right"]) in index]
        tree = {(index[ln.parent], index[ln.child]) for ln in ep.explanation.tree
                if ln.parent in index and ln.child in index}
        wk = ep.explanation.weakest
        weakest = (index[wk.parent], index[wk.child]) if wk and wk.parent in index and wk.child in index else None
        base = f"/entity/{ep.view.entity_id}" + (f"?other={other}&" if other else "?")
        graph = svg.entity_graph(labels, glinks, threshold=ep.view.threshold, tree=tree, weakest=weakest,
                                 selected=ep.chosen, hrefs=[f"{base}link={i}#evidence" for i in range(len(glinks))])
        wf = None
        if ep.chosen is not None and ep.prior_weight is not None:
            thr = ep.view.threshold
            ln = ep.links[ep.chosen]
            wf = Markup(svg.waterfall(ep.prior_weight, ln["evidence"],
                                      threshold_weight=review.weight(thr) if thr else None))
        return page(request, "entity.html", ep=ep, labels=labels, graph=Markup(graph), waterfall=wf,
                    other=ctx["other_view"], other_version=ctx["other_version"], next_item=ctx["next_item"],
                    prev_item=ctx["prev_item"], base=base, title=f"Entity {ep.view.entity_id}")

    async def search(request: Request) -> Response:
        text = request.query_params.get("q", "")
        exclude = request.query_params.get("exclude", "")
        found = await read(lambda: views.find_entities(proj, text))
        return page(request, "_search.html", found=[f for f in found if f["entity_id"] != exclude], q=text)

    async def model_page(request: Request) -> Response:
        def build() -> dict[str, Any]:
            s = state()
            mv = views.model_view(proj)
            sweep = None
            if st.truth:
                from idweave.linkage.charts import sweep_chart_html
                from idweave.linkage.evaluate import evaluate

                def chart() -> str:
                    rep = evaluate(proj, truth=st.truth)
                    html = sweep_chart_html(rep.sweep, current=rep.threshold)
                    return html[html.index("<svg"):html.rindex("</svg>") + 6]
                sweep = st.cached("sweep", s, chart)
            return {"mv": mv, "sweep": sweep}

        ctx = await read(build)
        chart = Markup(svg.weights_chart(ctx["mv"].comparisons)) if ctx["mv"].comparisons else None
        return page(request, "model.html", mv=ctx["mv"], chart=chart,
                    sweep=Markup(ctx["sweep"]) if ctx["sweep"] else None, truth=st.truth, title="Model")

    async def decisions_page(request: Request) -> Response:
        df = await read(lambda: review.decisions(proj))
        return page(request, "decisions.html", rows=list(reversed(df.to_dicts())), title="Decisions")

    async def signin_form(request: Request) -> Response:
        return page(request, "signin.html", next=request.query_params.get("next", "/"), title="Sign in")

    async def signin(request: Request) -> Response:
        form = await request.form()
        if not _csrf_ok(request, form):
            return page(request, "error.html", 403, message="The form's CSRF token is missing or wrong: reload the page.",
                        title="Refused")
        name = str(form.get("name", "")).strip()
        if not name:
            return page(request, "signin.html", 400, next=str(form.get("next", "/")), error="Give your name.",
                        title="Sign in")
        _session(request)["author"] = name[:80]
        nxt = str(form.get("next", "/"))
        return RedirectResponse(nxt if nxt.startswith("/") and not nxt.startswith("//") else "/", status_code=303)

    async def decide(request: Request) -> Response:
        action = request.path_params["action"]
        form = await request.form()
        if not _csrf_ok(request, form):
            return page(request, "error.html", 403, message="The form's CSRF token is missing or wrong: nothing was "
                        "recorded. Reload the page and decide again.", title="Refused")
        who = st.author or _session(request).get("author")
        if not who:
            return RedirectResponse("/signin", status_code=303)
        if action not in views.ACTIONS:
            return page(request, "error.html", 404, message=f"No decision named {action}.", title="Not found")
        reason = str(form.get("reason", "")).strip()
        entity = str(form.get("entity", "")).strip()
        other = str(form.get("other", "")).strip()
        expected = {}
        for key, eid in (("version", entity), ("other_version", other)):
            if form.get(key) and eid:
                expected[eid] = str(form.get(key))
        if action == "confirm":
            args: dict[str, Any] = {"entity_id": entity}
        elif action == "split":
            args = {"entity_id": entity, "records": [str(r) for r in form.getlist("records")]}
        elif action == "pin":
            args = {"entity_id": entity, "attribute": str(form.get("attribute", "")).strip(),
                    "value": str(form.get("value", ""))}
        elif action in ("merge", "keep_apart"):
            args = {"a": entity, "b": other}
            if not other:
                return page(request, "error.html", 400, message="Choose the other entity first.", title="Not recorded")
        else:
            d = str(form.get("decision_id", "")).strip()
            if not d.isdigit():
                return page(request, "error.html", 400, message="Name the decision to undo.", title="Not recorded")
            args = {"decision_id": int(d)}
        if action != "confirm" and not reason:
            return page(request, "error.html", 400, message="Give a reason: it is kept with the decision.",
                        title="Not recorded", back=str(form.get("back", "/")))

        def run() -> dict[str, Any]:
            res = views.decide(proj, action, expected=expected, author=who, reason=reason, **args)
            st.ensure_queue()  # what the decision changed is found again and stored
            with Store.reading(proj.store):
                changes = views.decision_changes(proj, res.decision_id)
                _, first = views.queue_neighbours(proj, "")
            return {"res": res, "changes": changes, "next_item": first}

        try:
            ctx = await call(run)
        except views.ConflictError as exc:
            return page(request, "conflict.html", 409, message=str(exc), back=str(form.get("back", "/")),
                        title="Conflict")
        return page(request, "result.html", **ctx, title=f"Decision #{ctx['res'].decision_id}")

    def _csrf_ok(request: Request, form: Any) -> bool:
        want = _session(request).get("csrf") or ""
        got = str(form.get("csrf", "") or request.headers.get("x-csrf-token", ""))
        return bool(want) and secrets.compare_digest(want.encode(), got.encode())

    routes = [
        Route("/", queue_page),
        Route("/entity/{entity_id}", entity_page),
        Route("/search", search),
        Route("/model", model_page),
        Route("/decisions", decisions_page),
        Route("/signin", signin_form, methods=["GET"]),
        Route("/signin", signin, methods=["POST"]),
        Route("/decide/{action}", decide, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=str(STATIC)), name="static"),
    ]

    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, StoreBusyError):
            resp = page(request, "busy.html", 503, title="A run is writing")
            resp.headers["Retry-After"] = "3"
            return resp
        status = 404 if "no entity" in str(exc) or "no decision" in str(exc) else 400
        return page(request, "error.html", status, message=str(exc), title="Not done")

    app = Starlette(routes=routes, exception_handlers={IdweaveError: on_error})
    app.state.token = st.token
    app.state.workbench = st
    return _Guard(app, st)


class _Guard:
    """The ASGI layer in front of the app: the access token, the session cookie and the
    security headers of every response."""

    def __init__(self, app: Starlette, st: _State):
        self.app = app
        self.st = st
        self.state = app.state
        self.routes = app.routes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        port = request.url.port or 0
        tok_name, sess_name = f"idweave_token_{port}", f"idweave_session_{port}"
        given = request.query_params.get("token")
        if given is not None and secrets.compare_digest(given.encode(), self.st.token.encode()):
            # Keep the token in a cookie and drop it from the address bar (and from history).
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + (("?" + urlencode(rest)) if rest else "")
            resp = RedirectResponse(target, status_code=303)
            resp.set_cookie(tok_name, self.st.token, httponly=True, samesite="strict", path="/")
            sid = request.cookies.get(sess_name)
            if sid not in self.st.sessions:
                sid = self._new_session()
                resp.set_cookie(sess_name, sid, httponly=True, samesite="strict", path="/")
            await self._headers(resp)(scope, receive, send)
            return
        cookie = request.cookies.get(tok_name, "")
        if not secrets.compare_digest(cookie.encode(), self.st.token.encode()):
            resp = HTMLResponse("<!doctype html><title>403</title><h1>403: no access token</h1>"
                                "<p>Open the workbench with the link <code>idweave serve</code> printed "
                                "(it ends with <code>?token=...</code>).</p>", status_code=403)
            await self._headers(resp)(scope, receive, send)
            return
        sid = request.cookies.get(sess_name)
        new_sid = None
        if sid not in self.st.sessions:
            sid = new_sid = self._new_session()
        scope["idweave_session"] = self.st.sessions[sid]
        if not self.st.author and not self.st.sessions[sid].get("author") and request.method == "GET" \
                and not request.url.path.startswith(("/signin", "/static")):
            resp = RedirectResponse("/signin?" + urlencode({"next": request.url.path}), status_code=303)
            if new_sid:
                resp.set_cookie(sess_name, new_sid, httponly=True, samesite="strict", path="/")
            await self._headers(resp)(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += self._header_list()
                if new_sid:
                    headers.append((b"set-cookie", f"{sess_name}={new_sid}; HttpOnly; Path=/; SameSite=strict".encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _new_session(self) -> str:
        sid = secrets.token_urlsafe(24)
        self.st.sessions[sid] = {"csrf": secrets.token_urlsafe(24), "author": None}
        return sid

    @staticmethod
    def _header_list() -> list[tuple[bytes, bytes]]:
        return [(b"content-security-policy", _CSP.encode()), (b"x-content-type-options", b"nosniff"),
                (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"),
                (b"cache-control", b"no-store")]

    def _headers(self, resp: Response) -> Response:
        for k, v in self._header_list():
            resp.headers[k.decode()] = v.decode()
        return resp


def serve(project: Project | str | Path | Mapping[str, Any], *, host: str = "127.0.0.1", port: int = 8765,
          author: str | None = None, truth: str | None = None, allow_remote: bool = False,
          token: str | None = None, announce: Callable[[str], None] | None = None) -> None:
    """Run the workbench until interrupted. As soon as it listens, ``announce`` (default:
    print on stdout, flushed) gets its URL with the access token on a line of its own.

    A ``host`` other than loopback needs ``allow_remote=True``: the token is then all that
    keeps others on the network out.
    """
    import uvicorn

    if host not in LOOPBACK and not allow_remote:
        raise IdweaveError(f"--host {host} would let other machines reach the workbench; "
                           "pass --allow-remote as well if that is meant (the token still guards it)")
    proj = resolve_project(project)  # bad project files fail here, before anything listens
    Store.require_file(proj.store)
    app = make_app(project, token=token, author=author, truth=truth)
    token = app.state.token

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    announce = announce or say
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)

    def watch() -> None:
        while not server.started:
            if server.should_exit:
                return
            time.sleep(0.02)
        bound = port
        for s in getattr(server, "servers", []):
            for sock in getattr(s, "sockets", []) or []:
                bound = sock.getsockname()[1]
        announce(workbench_url(host, bound, token))

    threading.Thread(target=watch, daemon=True).start()
    try:
        asyncio.run(server.serve())
    except KeyboardInterrupt:  # pragma: no cover - interactive stop
        pass


class BackgroundServer:
    """The workbench served from a thread of this process on a free loopback port, for
    tests and scripts: ``url`` (with the token) once started; :meth:`stop` ends it.

    >>> srv = BackgroundServer("fixtures/tiny/project.yaml", author="ada")
    >>> srv.url.startswith("http://127.0.0.1:") and "?token=" in srv.url
    True
    >>> srv.stop()
    """

    def __init__(self, project: Project | str | Path | Mapping[str, Any], *, author: str | None = None,
                 truth: str | None = None, token: str | None = None, timeout: float = 20.0):
        import socket

        import uvicorn

        self.app = make_app(project, token=token, author=author, truth=truth)
        self.token = self.app.state.token
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._sock = sock
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: self.server.run(sockets=[sock]), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                self.stop()
                raise RuntimeError("the workbench did not start")
            time.sleep(0.02)
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = workbench_url("127.0.0.1", self.port, self.token)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self._sock.close()
