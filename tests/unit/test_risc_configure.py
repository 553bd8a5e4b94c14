"""scripts/risc_configure.py against a local stand-in of Google's RISC management API that
checks the request the way Google documents it (a service-account JWT, push delivery)."""

from __future__ import annotations

import http.server
import json
import runpy
import threading
import time
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import RSAKey

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "risc_configure.py"


def test_stream_update_is_signed_by_the_service_account(tmp_path: Path) -> None:
    key = RSAKey.generate_key(2048)
    account = {
        "type": "service_account",
        "client_email": "risc-admin@proj.iam.gserviceaccount.com",
        "private_key_id": "kid-1",
        "private_key": key.as_pem(private=True).decode(),
    }
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(account))
    seen: list[tuple[str, dict[str, Any], dict[str, Any]]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            token = self.headers["Authorization"].removeprefix("Bearer ")
            claims = jwt.decode(token, RSAKey.import_key(key.as_dict(private=False))).claims
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            seen.append((self.path, claims, body))
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *a: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        mod = runpy.run_path(str(SCRIPT))
        api = f"http://127.0.0.1:{server.server_address[1]}"
        rc = mod["main"](["--service-account", str(path), "--receiver", "https://vault.example/provider-events/default/google-mail", "--api", api])
        assert rc == 0
    finally:
        server.shutdown()
        server.server_close()
    (p, claims, body) = seen[0]
    assert p == "/v1beta/stream:update"
    assert claims["iss"] == claims["sub"] == account["client_email"]
    assert claims["aud"] == "https://risc.googleapis.com/google.identity.risc.v1beta.RiscManagementService"
    assert 0 < claims["exp"] - time.time() <= 3600
    assert body["delivery"] == {
        "delivery_method": "https://schemas.openid.net/secevent/risc/delivery-method/push",
        "url": "https://vault.example/provider-events/default/google-mail",
    }
    assert "https://schemas.openid.net/secevent/risc/event-type/tokens-revoked" in body["events_requested"]
