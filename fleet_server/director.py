"""The director (DESIGN §5): an Ed25519 signature on every assignment and command.

The signature covers ``signed_payload()``: canonical JSON of the message without
``signature`` and ``keyid``. ``keyid`` is the sha256 of the raw 32-byte public key.
Ed25519 is deterministic, so signing the same stored payload again gives the same
bytes: the gateway signs at publish time and its reconcile still compares equal.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from fleet_server.errors import TrustError
from fleet_server.keys import director_private_key
from jetfleet.messages import Command, DesiredAssignment


def key_id(private: Ed25519PrivateKey) -> str:
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return hashlib.sha256(raw).hexdigest()


class Director:
    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.keyid = key_id(private)

    @classmethod
    def load(cls, keys_dir: Path) -> Director:
        return cls(director_private_key(keys_dir))

    def sign_assignment(self, assignment: DesiredAssignment) -> DesiredAssignment:
        signature = self._private.sign(assignment.signed_payload()).hex()
        return assignment.model_copy(update={"signature": signature, "keyid": self.keyid})

    def sign_command(self, command: Command) -> Command:
        signature = self._private.sign(command.signed_payload()).hex()
        return command.model_copy(update={"signature": signature, "keyid": self.keyid})

    def sign_desired_payload(self, payload: bytes) -> bytes:
        """A stored (unsigned) ``desired`` payload → the signed bytes to publish."""
        try:
            assignment = DesiredAssignment.model_validate_json(payload)
        except ValidationError as exc:
            raise TrustError(f"stored assignment cannot be signed: {exc}") from exc
        return self.sign_assignment(assignment).to_bytes()
