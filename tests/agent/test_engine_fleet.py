"""Engines per hardware profile (DESIGN §4, issue 6), end to end on the agent side.

Real agent, real Mosquitto, the fake fleet server of tests/agent/fleet.py; the GPU is
FAKE (tests/support/fakegpu.py: ``tensorrt`` / ``pycuda.driver`` stand-ins). The first
device of a profile builds, checks and uploads its engine; the next one downloads it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent import Agent
from edge_agent.errors import ConfigError
from jetfleet.frames import MAGIC, decode_frame
from jetfleet.messages import EngineRef, EngineUpload, decode
from jetfleet.package import PackageInfo, read_package
from jetson.profile import DeviceProfile
from tests.agent.fleet import FakeServer, agent_config
from tests.support.fakegpu import FakeGpu, make_trt_package
from tests.support.mosquitto import MosquittoBroker
from tests.support.polling import wait_until

ORIN = DeviceProfile(arch="aarch64", module="orin-nano", sm=87, tensorrt="10.3.0")


@pytest.fixture(scope="module")
def trt_package(tmp_path_factory: pytest.TempPathFactory) -> PackageInfo:
    return make_trt_package(tmp_path_factory.mktemp("trtpkg") / "tiny.jfpkg", seed=7)


@pytest.fixture
def start_agent(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[Any]:
    started: list[Agent] = []

    def start(gpu: FakeGpu, name: str = "a", device_id: str = "dev-1") -> Agent:
        config = agent_config(tmp_path / name, mosquitto.url, backend="tensorrt",
                              device_id=device_id)
        agent = Agent(config, profile_detector=lambda: ORIN, trt_module=gpu.trt,
                      cuda_module=gpu.cuda)
        agent.start()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


def _serving(agent: Agent, sha256: str) -> bool:
    engine = agent.engines.current
    return engine is not None and engine.sha256 == sha256


def _assign(server: FakeServer, info: PackageInfo, sequence: int = 1, **extra: Any) -> None:
    server.assign(info.sha256, Path(info.path).read_bytes(), release="tiny-trt-1",
                  sequence=sequence, **extra)


def _uploaded(server: FakeServer) -> tuple[EngineUpload, bytes] | None:
    """The announce and the reassembled plan, once every frame arrived."""
    announce = None
    blocks: dict[int, bytes] = {}
    for payload in list(server.uploads):
        if payload.startswith(MAGIC):
            frame = decode_frame(payload)
            blocks[frame.index] = frame.payload
        else:
            announce = decode("upload", payload, EngineUpload)
    if announce is None or len(blocks) < announce.block_count:
        return None
    return announce, b"".join(blocks[i] for i in range(announce.block_count))


def _onnx_plan(info: PackageInfo, gpu: FakeGpu, **kw: Any) -> bytes:
    onnx = read_package(Path(info.path)).variant("tensorrt")
    return gpu.plan(onnx, {"input": [[1, 64], [1, 64], [8, 64]]}, **kw)


def _ref(plan: bytes, engine_key: str = "sm87-trt10.3") -> EngineRef:
    sha = hashlib.sha256(plan).hexdigest()
    return EngineRef(engine_key=engine_key, target=f"engines/{sha}.plan", sha256=sha,
                     length=len(plan))


def test_first_device_builds_checks_serves_and_uploads(
    start_agent: Any, server: FakeServer, trt_package: PackageInfo
) -> None:
    gpu = FakeGpu()
    agent = start_agent(gpu)
    _assign(server, trt_package)
    wait_until(lambda: _serving(agent, trt_package.sha256), what="serving the built engine")
    assert gpu.builds == 1
    upload = wait_until(lambda: _uploaded(server), what="the engine upload")
    announce, plan = upload
    cached = next((agent.state_dir / "engines").glob("*/sm87-trt10.3.plan")).read_bytes()
    assert plan == cached
    assert announce.sha256 == hashlib.sha256(cached).hexdigest()
    assert announce.length == len(cached)
    assert (announce.engine_key, announce.package_sha256) == ("sm87-trt10.3", trt_package.sha256)
    assert announce.release == "tiny-trt-1"
    wait_until(lambda: "engine.uploaded" in server.event_types(), what="engine.uploaded")
    built = next(e for e in server.events if e.type == "engine.built")
    assert built.data["plan_sha256"] == announce.sha256
    assert built.data["source"] == "built"
    state = wait_until(lambda: server.latest_state(), what="state")
    assert state.profile_details["engine_key"] == "sm87-trt10.3"
    assert state.backend == "tensorrt"


def test_second_device_of_the_profile_downloads_the_engine_and_does_not_build(
    start_agent: Any, server: FakeServer, trt_package: PackageInfo
) -> None:
    builder = FakeGpu()
    plan = _onnx_plan(trt_package, builder)
    ref = _ref(plan)
    server.offer(ref.sha256, plan, 16384)
    gpu = FakeGpu()
    agent = start_agent(gpu)
    _assign(server, trt_package, engine=ref)
    wait_until(lambda: _serving(agent, trt_package.sha256), what="serving the assigned engine")
    assert gpu.builds == 0  # downloaded, golden-checked, used
    assert any(r.sha256 == ref.sha256 for r in server.requests)
    assert next((agent.state_dir / "engines").glob("*/sm87-trt10.3.plan")).read_bytes() == plan
    assert "engine.built" not in server.event_types()
    assert not server.uploads  # nothing built here: nothing to upload
    wait_until(lambda: agent.state.known_good_sha256 == trt_package.sha256, what="commit")
    assert (agent.slots.package_path(ref.sha256)) is None  # the slot copy is cleaned up


def test_an_assigned_engine_failing_golden_is_never_activated(
    start_agent: Any, server: FakeServer, trt_package: PackageInfo
) -> None:
    bad = _onnx_plan(trt_package, FakeGpu(), offset=1.0)  # deserializes, wrong outputs
    ref = _ref(bad)
    server.offer(ref.sha256, bad, 16384)
    gpu = FakeGpu()
    agent = start_agent(gpu)
    _assign(server, trt_package, engine=ref)
    wait_until(lambda: _serving(agent, trt_package.sha256), what="serving a built engine")
    assert gpu.builds == 1  # the assigned one was refused, one was built and checked
    cached = next((agent.state_dir / "engines").glob("*/sm87-trt10.3.plan")).read_bytes()
    assert cached != bad
    wait_until(lambda: "engine.refused" in server.event_types(), what="engine.refused")
    golden = read_package(Path(trt_package.path)).golden()
    engine = agent.engines.current
    assert engine is not None
    assert golden.compare(engine.run(golden.inputs)).ok  # the serving engine is a good one


def test_an_engine_for_another_profile_is_refused_and_not_fetched(
    start_agent: Any, server: FakeServer, trt_package: PackageInfo
) -> None:
    other = FakeGpu(sm=(7, 2), trt_version="8.5.2")
    plan = _onnx_plan(trt_package, other)
    ref = _ref(plan, engine_key=other.engine_key)
    server.offer(ref.sha256, plan, 16384)
    gpu = FakeGpu()
    agent = start_agent(gpu)
    _assign(server, trt_package, engine=ref)
    wait_until(lambda: _serving(agent, trt_package.sha256), what="serving a built engine")
    assert gpu.builds == 1
    assert not any(r.sha256 == ref.sha256 for r in server.requests)
    refused = wait_until(lambda: [e for e in server.events if e.type == "engine.refused"],
                         what="engine.refused")
    assert "sm72-trt8.5" in refused[0].message


def test_a_mislabelled_engine_that_does_not_deserialize_is_refused(
    start_agent: Any, server: FakeServer, trt_package: PackageInfo
) -> None:
    plan = _onnx_plan(trt_package, FakeGpu(sm=(7, 2), trt_version="8.5.2"))
    ref = _ref(plan)  # claims sm87-trt10.3: the fake TensorRT refuses to deserialize it
    server.offer(ref.sha256, plan, 16384)
    gpu = FakeGpu()
    agent = start_agent(gpu)
    _assign(server, trt_package, engine=ref)
    wait_until(lambda: _serving(agent, trt_package.sha256), what="serving a built engine")
    assert gpu.builds == 1
    assert any(r.sha256 == ref.sha256 for r in server.requests)


def test_backend_tensorrt_without_a_gpu_profile_is_a_config_error(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    config = agent_config(tmp_path, mosquitto.url, backend="tensorrt")
    cpu = DeviceProfile(arch="x86_64")
    with pytest.raises(ConfigError, match="backend tensorrt needs TensorRT and a known GPU"):
        Agent(config, profile_detector=lambda: cpu)


def test_engine_ref_is_covered_by_the_director_signature() -> None:
    from jetfleet.messages import DesiredAssignment

    base = {"device_id": "d", "release": "r", "target": "packages/x.jfpkg", "sha256": "a" * 64,
            "length": 10, "sequence": 1, "issued_at": 1.0}
    plain = DesiredAssignment(**base)
    with_engine = DesiredAssignment(**base, engine=_ref(b"plan"))
    payload = json.loads(with_engine.signed_payload())
    assert payload["engine"]["sha256"] == hashlib.sha256(b"plan").hexdigest()
    assert plain.signed_payload() != with_engine.signed_payload()
    assert "engine" not in json.loads(plain.signed_payload())  # old agents: bytes unchanged


@pytest.mark.gpu
def test_real_gpu_builds_serves_and_uploads(
    tmp_path: Path, mosquitto: MosquittoBroker, server: FakeServer, trt_package: PackageInfo
) -> None:
    """The same flow on a real GPU with real TensorRT + pycuda (skipped without them)."""
    pytest.importorskip("tensorrt")
    pytest.importorskip("pycuda.driver")
    from edge_agent.tensorrt import import_cuda, import_tensorrt

    trt, cuda = import_tensorrt(), import_cuda()
    cuda.init()
    major, minor = cuda.Device(0).compute_capability()
    profile = DeviceProfile(arch="x86_64", sm=int(major) * 10 + int(minor),
                            tensorrt=str(trt.__version__))
    config = agent_config(tmp_path, mosquitto.url, backend="tensorrt")
    agent = Agent(config, profile_detector=lambda: profile)
    agent.start()
    try:
        _assign(server, trt_package)
        wait_until(lambda: _serving(agent, trt_package.sha256), timeout=300,
                   what="serving an engine built by TensorRT")
        announce, plan = wait_until(lambda: _uploaded(server), timeout=60, what="upload")
        assert announce.engine_key == profile.engine_key
        assert hashlib.sha256(plan).hexdigest() == announce.sha256
    finally:
        agent.stop()
