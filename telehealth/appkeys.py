"""The app-wide objects' keys: what ``create_app`` (telehealth/app.py) puts in the aiohttp
application and the handlers read back. A module of its own so that the handlers (web/) take
them from the core without importing the wiring, which imports them."""

from __future__ import annotations

from aiohttp import web

from telehealth.audit import AuditLog
from telehealth.config import Config
from telehealth.mail import MailSender
from telehealth.ratelimit import LoginLimits
from telehealth.refusals import RefusalTally
from telehealth.store import Store

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)
AUDIT = web.AppKey("audit", AuditLog)
# Failed sign-ins (the console's and the ops dashboard's), per address and per account there.
LOGIN_LIMITS = web.AppKey("login_limits", LoginLimits)
# Refused attempts without a credential, counted for the audit log's summaries.
REFUSALS = web.AppKey("refusals", RefusalTally)
MAIL = web.AppKey("mail", MailSender)
