"""Exception tree of the edge agent.

    AgentError
    ├── ConfigError        agent.yaml missing, unreadable or invalid
    ├── StateError         state.json cannot be written
    ├── SlotError          a slot file or bitmap that cannot be used
    │   └── TransferError  a block transfer that failed (bad length, sha256, deadline)
    ├── BackendError       a runtime backend that cannot load or run a model
    ├── ActivationError    a staged package that failed testing (golden, latency, load)
    └── InferenceError     an inference request that cannot be served
        ├── BadRequest     the request itself is wrong (HTTP 400)
        └── NotServing     no engine is loaded (HTTP 503)
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


class ActivationError(AgentError):
    """A staged package failed testing: load, golden vectors or the latency budget."""


class InferenceError(AgentError):
    """An inference request could not be served."""


class BadRequest(InferenceError):
    """The request is malformed: wrong shape, dtype, input name or body."""


class NotServing(InferenceError):
    """No engine is loaded."""
