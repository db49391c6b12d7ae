"""Who is asking: the visitor key under which the scheduler (attnviz.jobs) queues a session's
computations, gives turns and counts quotas.

A visitor is a browser, not a tab: opening more tabs must not buy more turns. Streamlit 1.67
gives a page its cookies read-only (``st.context.cookies``, those sent with the websocket's
handshake) and sets no cookie an app could choose; the one cookie every browser gets is
Streamlit's XSRF cookie, ``_streamlit_xsrf``, present whenever XSRF protection is on (the demo
profile keeps it on: uploads need it). The server sets it on its first HTTP response to the
browser (the health check the page makes before it opens its websocket) and checks it at the
handshake; the browser then sends it from every tab. Its value is ``2|mask|masked
token|timestamp``: the token (16 random bytes) stays the same for the browser, while the mask
changes whenever the server sets the cookie again. So the visitor is a hash of the token, with
a salt drawn when the process starts: the same for every tab of one browser, different across
browsers, meaningless outside this process. The token itself is never shown, logged or kept.

Without that cookie (XSRF protection off, or AppTest, which has no browser) the visitor is the
session itself: a random key kept in its session state.

What a cookie cannot do: a client that drops its cookies, or a script that makes new ones, is
a new visitor each time. The per-visitor bounds (turns, quotas) are against a browser's many
tabs; the server-wide bounds (memory, workers) hold whatever the number of visitors. Network
addresses are not used: behind a proxy (a Hugging Face Space) every visitor has the proxy's.
"""
from __future__ import annotations

import binascii
import hashlib
import secrets

import streamlit as st

XSRF_COOKIE = "_streamlit_xsrf"
SESSION_VISITOR = "_visitor"  # session state: the visitor key of a session without the cookie
_SALT = secrets.token_bytes(16)  # this process's


def xsrf_token(cookie: str | None) -> bytes | None:
    """The token inside a ``_streamlit_xsrf`` cookie value (``2|mask|masked token|timestamp``,
    the token XORed with the 4-byte mask repeated), or None when it is not one."""
    parts = (cookie or "").strip("\"'").split("|")
    if len(parts) != 4 or parts[0] != "2":
        return None
    try:
        mask, masked = binascii.a2b_hex(parts[1]), binascii.a2b_hex(parts[2])
    except (binascii.Error, ValueError):
        return None
    if len(mask) != 4 or not masked:
        return None
    return bytes(b ^ mask[i % 4] for i, b in enumerate(masked))


def visitor_of(cookie: str | None) -> str | None:
    """The visitor key of a browser whose XSRF cookie is ``cookie``; None without a token."""
    token = xsrf_token(cookie)
    return None if token is None else "browser:" + hashlib.sha256(_SALT + token).hexdigest()[:24]


def visitor() -> str:
    """This session's visitor key: its browser's (see the module docstring), else its own."""
    try:
        cookie = st.context.cookies.get(XSRF_COOKIE)
    except RuntimeError:  # no server runtime (AppTest): the session is the visitor
        cookie = None
    key = visitor_of(cookie)
    if key is not None:
        return key
    if SESSION_VISITOR not in st.session_state:
        st.session_state[SESSION_VISITOR] = "session:" + secrets.token_hex(12)
    return st.session_state[SESSION_VISITOR]
