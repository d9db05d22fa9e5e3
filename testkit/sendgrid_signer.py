"""Plays SendGrid's signing of its Event Webhook, for tests and benchmarks alike."""

from __future__ import annotations

import base64
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec


class Signer:
    """Plays SendGrid: an ECDSA P-256 key pair; signs timestamp + body."""

    def __init__(self, key: ec.EllipticCurvePrivateKey | None = None) -> None:
        self.key = key or ec.generate_private_key(ec.SECP256R1())
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key = base64.b64encode(der).decode()

    def private_pem(self) -> bytes:
        """The key, for a load generator in another process (`Signer.from_pem`)."""
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())  # fmt: skip

    @classmethod
    def from_pem(cls, pem: bytes) -> Signer:
        return cls(serialization.load_pem_private_key(pem, None))

    def headers(self, body: bytes) -> dict[str, str]:
        timestamp = str(int(time.time()))
        signature = self.key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        }
