"""jetfleet edge agent: OTA receiver, slots, runtime, activation, telemetry, local API.

Runs on the device (Python 3.10+, only the ``[agent]`` extra).  Start it with
``jetfleet agent run --config agent.yaml`` or :func:`run_agent`.
"""

from edge_agent.activation import Activator
from edge_agent.batching import Batcher
from edge_agent.buffer import Buffer, Forwarder
from edge_agent.client import AgentClient
from edge_agent.config import AgentConfig, ReplayConfig, TlsConfig, load_config, parse_config
from edge_agent.daemon import Agent, run_agent
from edge_agent.engine import Engine, EngineSlot, InferenceResult, InferenceService, load_engine
from edge_agent.enginebuild import CachedEngine, EngineCache, build_engine
from edge_agent.errors import (
    ActivationError,
    AgentError,
    BackendError,
    BadRequest,
    ConfigError,
    EngineError,
    InferenceError,
    NotServing,
    Overloaded,
    RateLimited,
    RuntimeCrashed,
    SlotError,
    StateError,
    TransferError,
)
from edge_agent.ota import Download, Outcome, TransferCounters
from edge_agent.ratelimit import TokenBucket
from edge_agent.rules import ServingConfig, WatchdogConfig
from edge_agent.runtime import Backend, InputSpec, OnnxRuntimeBackend, backend_factory
from edge_agent.slots import Slot, SlotStore
from edge_agent.state import AgentState, StateStore
from edge_agent.telemetry import GpuProvider, InferenceStats, NoGpu, TelemetryCollector
from edge_agent.tensorrt import OnnxRuntimeGpuBackend, TensorRTBackend
from edge_agent.watchdog import RequestLog, Watchdog

__all__ = [
    "ActivationError",
    "Activator",
    "Agent",
    "AgentClient",
    "AgentConfig",
    "AgentError",
    "AgentState",
    "Backend",
    "BackendError",
    "BadRequest",
    "Batcher",
    "Buffer",
    "CachedEngine",
    "ConfigError",
    "Download",
    "Engine",
    "EngineCache",
    "EngineError",
    "EngineSlot",
    "Forwarder",
    "GpuProvider",
    "InferenceError",
    "InferenceResult",
    "InferenceService",
    "InferenceStats",
    "InputSpec",
    "NoGpu",
    "NotServing",
    "OnnxRuntimeBackend",
    "OnnxRuntimeGpuBackend",
    "Outcome",
    "Overloaded",
    "RateLimited",
    "ReplayConfig",
    "RequestLog",
    "RuntimeCrashed",
    "ServingConfig",
    "Slot",
    "SlotError",
    "SlotStore",
    "StateError",
    "StateStore",
    "TelemetryCollector",
    "TensorRTBackend",
    "TlsConfig",
    "TokenBucket",
    "TransferCounters",
    "TransferError",
    "Watchdog",
    "WatchdogConfig",
    "backend_factory",
    "build_engine",
    "load_config",
    "load_engine",
    "parse_config",
    "run_agent",
]
