"""A root key in AWS KMS: ``id:aws-kms:<key ARN>``.

boto3 is synchronous: every call runs in a worker thread (``asyncio.to_thread``),
never on the event loop. Credentials and endpoint come from AWS's standard chain
(``AWS_PROFILE``, ``AWS_ACCESS_KEY_ID``, instance or task roles, ...;
``AWS_REGION``, ``AWS_ENDPOINT_URL_KMS``). Each wrapping carries an encryption
context naming the environment and the keyring key, so CloudTrail shows which
environment's keyring a ``Decrypt`` was for, and a key policy can be conditioned
on it (``kms:EncryptionContext:grantkeeper:environment``).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Mapping
from typing import Any

from grantkeeper.errors import RootKeyUnavailable

__all__ = ["AwsKmsRoot"]

# answers from KMS that mean "this key may not be used" rather than "try again"
_DENIED = {
    "DisabledException",
    "KMSInvalidStateException",
    "NotFoundException",
    "AccessDeniedException",
    "AccessDeniedFault",
    "KMSAccessDeniedException",
    "IncorrectKeyException",
}


class AwsKmsRoot:
    backend = "aws-kms"

    def __init__(self, root_id: str, arn: str, *, timeout: float) -> None:
        self.id = root_id
        self.arn = arn
        self._timeout = timeout
        self._client: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AwsKmsRoot({self.id!r}, {self.arn!r})"

    def describe(self) -> str:
        return f"AWS KMS {self.arn}"

    def _kms(self) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    import boto3
                    from botocore.config import Config
                except ImportError:
                    raise RootKeyUnavailable(
                        self.id,
                        self.backend,
                        "unreachable",
                        f"root key '{self.id}' (aws-kms) needs boto3: pip install 'grantkeeper[aws]'",
                    ) from None
                region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                self._client = boto3.session.Session().client(
                    "kms",
                    region_name=region or self.arn.split(":")[3],
                    config=Config(
                        connect_timeout=self._timeout,
                        read_timeout=self._timeout,
                        retries={"max_attempts": 2, "mode": "standard"},
                    ),
                )
            return self._client

    def _fail(self, exc: Exception) -> RootKeyUnavailable:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "InvalidCiphertextException":
                return RootKeyUnavailable(
                    self.id,
                    self.backend,
                    "wrong_key",
                    f"root key '{self.id}' (aws-kms {self.arn}) did not open the keyring ({code})",
                )
            reason = "denied" if code in _DENIED else "unreachable"
            return RootKeyUnavailable(
                self.id,
                self.backend,
                reason,
                f"root key '{self.id}' (aws-kms {self.arn}) refused: {code or 'error'}",
            )
        return RootKeyUnavailable(
            self.id,
            self.backend,
            "unreachable",
            f"root key '{self.id}' (aws-kms {self.arn}) is unreachable ({type(exc).__name__})",
        )

    def _call(self, op: str, **kw: Any) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            result: dict[str, Any] = getattr(self._kms(), op)(KeyId=self.arn, **kw)
            return result
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(exc) from None

    async def wrap(self, plaintext: bytes, context: Mapping[str, str]) -> bytes:
        r = await asyncio.to_thread(
            self._call, "encrypt", Plaintext=plaintext, EncryptionContext=dict(context)
        )
        return bytes(r["CiphertextBlob"])

    async def unwrap(self, blob: bytes, context: Mapping[str, str]) -> bytes:
        r = await asyncio.to_thread(
            self._call, "decrypt", CiphertextBlob=blob, EncryptionContext=dict(context)
        )
        return bytes(r["Plaintext"])
