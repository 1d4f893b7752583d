"""The widget maker: the Flask app (app.py), its stores (store.py: SQLite; postgres.py) and metrics."""

from widgets.maker.app import create_app, make_server

__all__ = ["create_app", "make_server"]
