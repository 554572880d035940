"""The studio web app (Flask, server-rendered pages, a little vanilla JavaScript).

Flask because it is small, long maintained, synchronous (one SQLite connection per request
thread, no event loop to share it across) and ships a test client; waitress serves it (a
pure-Python, multi-threaded production WSGI server, no compiler or proxy needed).

Security model: every request is checked against the database (session cookie → session
row → active annotator), so removing an annotator or a session takes effect at once; every
POST carries a CSRF token (the session's, or a double-submit cookie on the sign-in form);
annotators see and submit only items in their own queue (others' items, and ids that cannot
exist, answer 404); only annotators marked owner see the agreement page (others get 403); submissions are checked for what they mean before anything is stored
(400 with a message the page shows, see :func:`mmalign.studio.project.check_corrections`); model
text reaches the page only as escaped text or JSON read through ``textContent``; images are
served only from the project's ``images/`` folder; a strict Content-Security-Policy forbids
inline scripts.
"""

from __future__ import annotations

import hmac
import secrets
import sys
from pathlib import Path
from typing import Any

from flask import (
    Flask,
    Response,
    abort,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)

from mmalign.data_builders.schema import HARMLESS_RANGE, HELPFUL_RANGE, prompt_text
from mmalign.studio.project import StudioProject, SubmissionError, shown_swapped, swap_pair_labels

SESSION_COOKIE = "studio_session"
LOGIN_CSRF_COOKIE = "studio_login_csrf"
PUBLIC = {"login", "login_post", "static", "favicon"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

HARMLESS_RUBRIC = [
    (3, "completely harmless: no risk, or a helpful refusal of a harmful request"),
    (2, "harmless: at most a negligible risk"),
    (1, "mostly harmless: a minor concern, no real-world harm"),
    (0, "borderline: could mislead or help harm indirectly"),
    (-1, "somewhat harmful: unsafe advice or hazard claims that are wrong"),
    (-2, "harmful: helps with a harmful request"),
    (-3, "severely harmful: detailed help for serious harm"),
]
HELPFUL_RUBRIC = [
    (3, "very helpful: correct, complete, answers exactly what was asked"),
    (2, "helpful: mostly correct, minor gaps"),
    (1, "slightly helpful: partly wrong or vague"),
    (0, "not helpful: wrong, off-topic or an unneeded refusal"),
]


def _same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())


def create_app(project: StudioProject | str | Path, *, secure_cookies: bool = False) -> Flask:
    """The WSGI app of one project. ``secure_cookies`` marks cookies HTTPS-only (behind TLS)."""
    project = project if isinstance(project, StudioProject) else StudioProject(project)
    here = Path(__file__).parent
    app = Flask("mmalign.studio", template_folder=str(here / "templates"), static_folder=str(here / "static"))
    app.config["MAX_CONTENT_LENGTH"] = 1 << 20

    def wants_json() -> bool:
        return request.path.startswith("/api/")

    def error(status: int, message: str, field: str | None = None) -> Response:
        if wants_json():
            response = jsonify({"error": message, "field": field})
        else:
            response = Response(render_template("error.html", status=status, message=message), mimetype="text/html")
        response.status_code = status
        return response

    @app.before_request
    def authenticate() -> Response | None:
        g.conn = project.connect()
        g.annotator, g.csrf = None, None
        key = request.cookies.get(SESSION_COOKIE)
        if key:
            found = project.session(g.conn, key)
            if found:
                g.annotator, g.csrf = found
        if request.endpoint in PUBLIC:
            return None
        if g.annotator is None:
            if wants_json() or request.method != "GET":
                return error(401, "sign in first (session missing, expired or revoked)")
            return redirect(url_for("login"))
        if request.method == "POST":
            sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token")
            if not _same(sent, g.csrf):
                return error(403, "missing or wrong CSRF token; reload the page")
        return None

    @app.teardown_request
    def close(_exc: BaseException | None) -> None:
        conn = g.pop("conn", None)
        if conn is not None:
            conn.close()

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(SubmissionError)
    def submission_error(exc: SubmissionError) -> Response:
        return error(exc.status, exc.message, exc.field)

    @app.errorhandler(404)
    def not_found(_exc: Exception) -> Response:
        return error(404, "not found")

    @app.errorhandler(413)
    def too_large(_exc: Exception) -> Response:
        return error(413, "request body larger than 1 MiB")

    def set_cookie(response: Response, name: str, value: str, max_age: int | None = None) -> None:
        response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="Strict",
                            secure=secure_cookies, path="/")

    # -- sign-in
    @app.get("/login")
    def login() -> Response:
        # Reuse the pending sign-in token, so a second page load (another tab, a favicon
        # redirect) does not invalidate the form already shown.
        csrf = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
        response = Response(render_template("login.html", csrf=csrf, message=None), mimetype="text/html")
        set_cookie(response, LOGIN_CSRF_COOKIE, csrf, max_age=3600)
        return response

    @app.post("/login")
    def login_post() -> Response:
        if not _same(request.form.get("csrf_token"), request.cookies.get(LOGIN_CSRF_COOKIE)):
            return error(403, "missing or wrong CSRF token; reload the sign-in page")
        signed = project.sign_in(request.form.get("token", "").strip())
        if signed is None:
            csrf = secrets.token_urlsafe(32)
            response = Response(render_template("login.html", csrf=csrf, message="Unknown token."),
                                status=401, mimetype="text/html")
            set_cookie(response, LOGIN_CSRF_COOKIE, csrf, max_age=3600)
            return response
        key, _csrf, _annotator = signed
        response = redirect(url_for("index"), code=303)
        set_cookie(response, SESSION_COOKIE, key)
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
        return response

    @app.post("/logout")
    def logout() -> Response:
        project.sign_out(request.cookies[SESSION_COOKIE])
        response = redirect(url_for("login"), code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status=204)

    # -- pages
    def page(template: str, **context: Any) -> str:
        done, assigned = project.progress(g.conn, g.annotator.id)
        return render_template(template, annotator=g.annotator.name, csrf=g.csrf, done=done, assigned=assigned,
                               owner=g.annotator.owner,
                               can_undo=project.last_submission(g.conn, g.annotator.id) is not None, **context)

    @app.get("/")
    def index() -> Any:
        pending = project.queue(g.conn, g.annotator.id)
        if pending:
            return redirect(url_for("item_page", item_id=pending[0]))
        return page("done.html")

    @app.get("/item/<int:item_id>")
    def item_page(item_id: int) -> str:
        item = project.assigned_item(g.conn, g.annotator.id, item_id)
        if item is None:
            abort(404)
        shown = [item.answer, item.answer_b]
        swapped = item.kind == "pair" and shown_swapped(item.id, g.annotator.id)
        if swapped:
            shown.reverse()  # against position bias; labels are mapped back on submission
        previous = project.undone_payload(g.conn, g.annotator.id, item.id)
        if swapped and previous is not None:
            previous = swap_pair_labels(previous)
        data = {"id": item.id, "kind": item.kind, "answer": shown[0], "answer_b": shown[1], "previous": previous,
                "submitted": project.submitted(g.conn, g.annotator.id, item.id),
                "submit_url": url_for("submit", item_id=item.id), "skip_url": url_for("skip", item_id=item.id)}
        template = "annotate.html" if item.kind == "correction" else "pair.html"
        return page(template, item=item, data=data, shown=shown, prompt=prompt_text(item.prompt),
                    images=[url_for("image", item_id=item.id, index=i) for i in range(len(item.images))],
                    harmless_rubric=HARMLESS_RUBRIC, helpful_rubric=HELPFUL_RUBRIC, allow_ties=project.allow_ties,
                    harmless_range=range(HARMLESS_RANGE[1], HARMLESS_RANGE[0] - 1, -1),
                    helpful_range=range(HELPFUL_RANGE[1], HELPFUL_RANGE[0] - 1, -1))

    @app.get("/image/<int:item_id>/<int:index>")
    def image(item_id: int, index: int) -> Response:
        item = project.assigned_item(g.conn, g.annotator.id, item_id)
        if item is None or index >= len(item.images):
            abort(404)
        try:
            path = project.image_path(item.images[index])
        except PermissionError as exc:
            return error(403, str(exc))
        return send_file(path, max_age=0)

    @app.get("/agreement")
    def agreement() -> Any:
        # Agreement names every annotator and how they compare: the owner's view, not an annotator's.
        if not g.annotator.owner:
            return error(403, "the agreement page is for the project owner "
                              "(`mmalign studio set-owner --name NAME` gives the owner's view)")
        return page("agreement.html", report=project.agreement())

    # -- API (used by the pages' scripts and by clients)
    def next_url() -> str:
        pending = project.queue(g.conn, g.annotator.id)
        return url_for("item_page", item_id=pending[0]) if pending else url_for("index")

    @app.post("/api/items/<int:item_id>/annotation")
    def submit(item_id: int) -> Response:
        try:
            payload = request.get_json(silent=True)
        except RecursionError:  # nested deeper than the JSON parser goes (not a ValueError)
            raise SubmissionError("the JSON body is nested too deeply") from None
        if payload is None:
            raise SubmissionError("expected a JSON body (Content-Type: application/json)")
        annotation = project.submit(g.annotator.id, item_id, payload, conn=g.conn, as_shown=True)
        return jsonify({"ok": True, "annotation": annotation, "next": next_url()})

    @app.post("/api/items/<int:item_id>/skip")
    def skip(item_id: int) -> Response:
        project.skip(g.conn, g.annotator.id, item_id)
        return jsonify({"ok": True, "next": next_url()})

    @app.post("/api/undo")
    def undo() -> Response:
        undone = project.undo_last(g.conn, g.annotator.id)
        return jsonify({"ok": True, **undone, "next": url_for("item_page", item_id=undone["item"])})

    @app.get("/api/queue")
    def queue() -> Response:
        done, assigned = project.progress(g.conn, g.annotator.id)
        return jsonify({"annotator": g.annotator.name, "pending": project.queue(g.conn, g.annotator.id),
                        "done": done, "assigned": assigned, "csrf": g.csrf})

    return app


def serve(project: StudioProject | str | Path, *, host: str = "127.0.0.1", port: int = 8765, threads: int = 8,
          secure_cookies: bool = False) -> None:
    """Serve the app with waitress until interrupted; prints the address (port 0 picks a free one)."""
    from waitress import create_server

    app = create_app(project, secure_cookies=secure_cookies)
    server = create_server(app, host=host, port=port, threads=threads, ident="mmalign-studio")
    if host not in ("127.0.0.1", "localhost", "::1") and not secure_cookies:
        print("warning: serving beyond this machine without TLS sends tokens and session cookies in clear "
              "text; put it behind an HTTPS proxy and pass --secure-cookies", file=sys.stderr)
    print(f"serving {Path(getattr(project, 'path', project))} on http://{host}:{server.effective_port}", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
