"""Real root-key backends for tests: AWS KMS (moto in server mode) and an HSM (SoftHSM2).

``moto_server`` runs on a free loopback port and is reached through
``AWS_ENDPOINT_URL_KMS``, exactly as a real KMS endpoint would be. moto does not
enforce a disabled key, so "the KMS is down" is proven by stopping the process
(``SIGSTOP``: it keeps its keys and answers again after ``SIGCONT``).

SoftHSM2 (Debian's ``softhsm2``, installed by ``scripts/test``) gets a token of its
own in a temporary directory (``SOFTHSM2_CONF``); AES keys are generated inside it
with python-pkcs11. Destroying a key object there is a real crypto-shred.

Missing components skip with a visible notice, unless ``GRANTKEEPER_REQUIRE_KMS=1`` /
``GRANTKEEPER_REQUIRE_HSM=1`` (set by ``.ci/run``) turn the skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.gk import free_port

SOFTHSM_MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
HSM_PIN = "4711"


def _missing(what: str, var: str) -> None:
    if os.environ.get(var) == "1":
        pytest.fail(f"{what} is required ({var}=1) but not available")
    pytest.skip(f"{what} not available: root-key tests on it skipped (set {var}=1 to require it)")


@dataclass
class Kms:
    """A running moto KMS on loopback."""

    proc: subprocess.Popen[bytes]
    endpoint: str
    env: dict[str, str]
    stopped: bool = False

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "kms",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def create_key(self) -> str:
        return str(self.client().create_key(KeySpec="SYMMETRIC_DEFAULT", Description="grantkeeper test root")["KeyMetadata"]["Arn"])

    def pause(self) -> None:
        """The KMS stops answering (connections hang, as with a network partition)."""
        self.proc.send_signal(signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.stopped = False


@pytest.fixture
def kms(tmp_path: Path) -> Iterator[Kms]:
    try:
        import boto3  # noqa: F401
        import moto  # noqa: F401
    except ImportError:
        _missing("moto / boto3 (the dev extra)", "GRANTKEEPER_REQUIRE_KMS")
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if exe is None:
        _missing("moto_server", "GRANTKEEPER_REQUIRE_KMS")
    assert exe is not None
    port = free_port()
    log = open(tmp_path / "moto.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(endpoint + "/moto-api/", timeout=1)
            break
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not start: {(tmp_path / 'moto.log').read_text()[-2000:]}") from None
            time.sleep(0.1)
    env = {
        "AWS_ENDPOINT_URL_KMS": endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
        "GRANTKEEPER_KMS_TIMEOUT": "1",
    }
    k = Kms(proc, endpoint, env)
    try:
        yield k
    finally:
        if k.stopped:
            k.resume()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@dataclass
class Hsm:
    """A SoftHSM2 token of the test's own: ``pkcs11:token=<label>;object=<key>`` URIs."""

    conf: Path
    module: str
    token: str
    env: dict[str, str] = field(default_factory=dict)

    def _run(self, code: str) -> None:
        """In a process of its own: a PKCS#11 library reads SOFTHSM2_CONF once per process."""
        script = (
            "import sys, pkcs11\n"
            "from pkcs11 import Attribute, KeyType, ObjectClass\n"
            f"s = pkcs11.lib({self.module!r}).get_token(token_label={self.token!r}).open(user_pin={HSM_PIN!r}, rw=True)\n"
            + code
            + "\ns.close()\n"
        )
        subprocess.run([sys.executable, "-c", script], env=dict(os.environ, SOFTHSM2_CONF=str(self.conf)), check=True, capture_output=True, timeout=60)

    def create_key(self, label: str) -> str:
        self._run(
            f"s.generate_key(KeyType.AES, 256, label={label!r}, store=True, "
            "template={Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True})"
        )
        return f"pkcs11:token={self.token};object={label}"

    def destroy_key(self, label: str) -> None:
        """Crypto-shredding: the key object is gone from the token for good."""
        self._run(f"s.get_key(label={label!r}, key_type=KeyType.AES, object_class=ObjectClass.SECRET_KEY).destroy()")


@pytest.fixture
def hsm(tmp_path: Path) -> Hsm:
    module = next((m for m in SOFTHSM_MODULES if Path(m).exists()), None)
    util = shutil.which("softhsm2-util")
    if module is None or util is None:
        _missing("SoftHSM2 (Debian package softhsm2)", "GRANTKEEPER_REQUIRE_HSM")
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        _missing("python-pkcs11 (the dev extra)", "GRANTKEEPER_REQUIRE_HSM")
    assert module is not None and util is not None
    tokens = tmp_path / "softhsm-tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    label = "gk-" + os.urandom(3).hex()
    subprocess.run(
        [util, "--init-token", "--free", "--label", label, "--pin", HSM_PIN, "--so-pin", "0000"],
        env=dict(os.environ, SOFTHSM2_CONF=str(conf)),
        check=True,
        capture_output=True,
    )
    env = {"SOFTHSM2_CONF": str(conf), "GRANTKEEPER_PKCS11_MODULE": module, "GRANTKEEPER_PKCS11_PIN": HSM_PIN}
    return Hsm(conf, module, label, env)
