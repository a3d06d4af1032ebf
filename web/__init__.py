"""idweave.web: the review workbench, a local browser app over the identity store.

Starlette serves server-rendered Jinja2 pages (autoescaped) with htmx for the small
interactive parts; every asset ships in this package (no CDN, no network). The pages
show what :mod:`idweave.linkage.views` gathers and record decisions through it: the web
layer holds no business logic.

>>> from idweave.web import make_app
>>> callable(make_app)
True
"""

from idweave.web.app import make_app, serve, workbench_url

__all__ = ["make_app", "serve", "workbench_url"]
