"""Admin UI sign-out ends the session on the server: the old cookie no longer works."""

from __future__ import annotations

from tests.integration.test_admin_ui_http import Browserless, signed_in
from tests.support.gk import Server


def test_sign_out_invalidates_the_old_cookie_server_side(gk: Server) -> None:
    ui = signed_in(Browserless(gk))
    try:
        cookies = dict(ui.http.cookies)
        assert ui.get("/ui").status_code == 200
        r = ui.post_form("/ui", "/ui/sign-out", {})
        assert r.status_code == 303 and r.headers["location"] == "/ui/sign-in"
    finally:
        ui.close()
    # a stolen or kept copy of the cookie is refused after sign-out
    replay = Browserless(gk)
    try:
        for name, value in cookies.items():
            replay.http.cookies.set(name, value)
        r = replay.get("/ui")
        assert r.status_code == 303 and r.headers["location"] == "/ui/sign-in"
        r = replay.get("/ui/grants")
        assert r.status_code == 303
    finally:
        replay.close()
    # signing in again works
    again = signed_in(Browserless(gk))
    try:
        assert again.get("/ui").status_code == 200
    finally:
        again.close()
