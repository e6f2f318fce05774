"""The API's routes, one module per resource: analyses (history), spots, clinics, sessions
(sign-up, sign-in, anonymous device), the account (export, deletion), the model cards and
health, on-device analysis, and the page. ``app.py`` includes each router."""

from dermalab.serve.routers.account import account
from dermalab.serve.routers.analyses import analyses
from dermalab.serve.routers.auth import auth
from dermalab.serve.routers.clinics import clinics
from dermalab.serve.routers.meta import meta
from dermalab.serve.routers.ondevice import ondevice, ort
from dermalab.serve.routers.page import page
from dermalab.serve.routers.spots import spots

__all__ = ["account", "analyses", "auth", "clinics", "meta", "ondevice", "ort", "page", "spots"]
