"""Exception tree of the edge agent.

    AgentError
    ├── ConfigError        agent.yaml missing, unreadable or invalid
    ├── StateError         state.json cannot be written
    ├── SlotError          a slot file or bitmap that cannot be used
    │   └── TransferError  a block transfer that failed (bad length, sha256, deadline)
    ├── BackendError       a runtime backend that cannot load or run a model
    │   ├── RuntimeCrashed the runtime itself died (restart it; not a bad request)
    │   └── EngineError    a TensorRT engine that does not build, deserialize or pass golden
    ├── ActivationError    a staged package that failed testing (golden, latency, load)
    ├── TrustRefused       a message or package refused by the director/TUF checks
    └── InferenceError     an inference request that cannot be served
        ├── BadRequest     the request itself is wrong (HTTP 400)
        ├── NotServing     no engine is loaded (HTTP 503)
        ├── RateLimited    over the admission rate (HTTP 429)
        └── Overloaded     the request queue is full (HTTP 503)
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error raised by the edge agent."""


class ConfigError(AgentError):
    """agent.yaml is missing, unreadable or invalid; the message names the field."""


class StateError(AgentError):
    """state.json could not be written."""


class SlotError(AgentError):
    """A slot's files are unusable (I/O error, no space, wrong layout)."""


class TransferError(SlotError):
    """A block transfer failed: a block outside the declared length, sha256 or deadline."""


class BackendError(AgentError):
    """A runtime backend could not load or run a model."""


class EngineError(BackendError):
    """A TensorRT engine failed to build, deserialize or match its golden vectors.

    Such an engine is never activated, and its cache entry (if any) is removed.
    """


class RuntimeCrashed(BackendError):
    """The runtime died (not the request's fault); the engine must be reloaded."""


class ActivationError(AgentError):
    """A staged package failed testing: load, golden vectors or the latency budget."""


class InferenceError(AgentError):
    """An inference request could not be served."""


class BadRequest(InferenceError):
    """The request is malformed: wrong shape, dtype, input name or body."""


class NotServing(InferenceError):
    """No engine is loaded."""


class RateLimited(InferenceError):
    """Over the token-bucket admission rate (HTTP 429)."""


class Overloaded(InferenceError):
    """The inference queue is full (HTTP 503)."""


class TrustRefused(AgentError):
    """A message or package refused by the trust checks (director signature, TUF).

    ``reason`` is a short code (``bad_signature``, ``tuf_rollback``, ...) for the
    ``security.rejected`` event.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
