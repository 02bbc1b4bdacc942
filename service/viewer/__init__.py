"""The viewer: a static page the gateway serves at ``/viewer`` (``static/``: plain HTML, CSS and
JavaScript, no build step, nothing fetched from another host), and the images it shows, rendered
from the model-grid volumes the gateway keeps of its most recent triages (``volumes``)."""

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
