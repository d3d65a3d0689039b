"""tegrastats parser on every recorded board line, fuzzing, and the subprocess reader."""

from __future__ import annotations

import stat
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetson.errors import TegrastatsError
from jetson.tegrastats import (
    CpuCore,
    Engine,
    Memory,
    Rail,
    Swap,
    parse_line,
    to_gpu_metrics,
)
from jetson.tegrastats_reader import TegrastatsReader

TEGRASTATS = Path(__file__).parents[1] / "fixtures" / "tegrastats"
BOARDS = sorted(p.stem for p in TEGRASTATS.glob("*.txt"))


def lines(board: str) -> list[str]:
    return [line for line in (TEGRASTATS / f"{board}.txt").read_text().splitlines() if line]


ALL_LINES = [(board, i, line) for board in BOARDS for i, line in enumerate(lines(board))]


def test_fixtures_cover_every_board() -> None:
    assert BOARDS == [
        "nano",
        "nano-sudo",
        "orin",
        "orin-sudo",
        "tx1",
        "tx1-sudo",
        "tx2",
        "tx2-sudo",
        "unknown-board",
        "xavier",
        "xavier-sudo",
    ]


@pytest.mark.parametrize(("board", "index", "line"), ALL_LINES, ids=lambda v: str(v)[:20])
def test_every_fixture_line_is_fully_recognised(board: str, index: int, line: str) -> None:
    sample = parse_line(line)
    assert sample.unparsed == (), f"{board}[{index}] left {sample.unparsed}"
    assert sample.ram is not None
    assert 0 < sample.ram.used_mb < sample.ram.total_mb
    assert sample.cpus
    assert all(c.online and c.load_pct is not None and 0 <= c.load_pct <= 100 for c in sample.cpus)
    assert sample.temperatures
    assert to_gpu_metrics(sample) is not None


def test_nano_sudo() -> None:
    (line,) = lines("nano-sudo")
    s = parse_line(line)
    assert s.timestamp is None
    assert s.ram == Memory(331, 3964, 758, 4)
    assert s.swap == Swap(0, 1982, 0)
    assert s.iram == Memory(0, 252 / 1024, 1, 252 / 1024)
    assert s.cpus == (
        CpuCore(True, 15, 102),
        CpuCore(True, 65, 102),
        CpuCore(True, 53, 102),
        CpuCore(True, 21, 102),
    )
    assert s.emc == Engine(True, 3, 204)
    assert s.gpu == Engine(True, 43, 76)
    assert s.engines == {"APE": Engine(True, None, 25)}
    assert s.temperatures == {
        "PLL": 20.5,
        "CPU": 23.5,
        "PMIC": 100.0,
        "GPU": 22.5,
        "AO": 27.5,
        "thermal": 23.0,
    }
    assert s.rails == {
        "POM_5V_IN": Rail(933, 933),
        "POM_5V_GPU": Rail(0, 0),
        "POM_5V_CPU": Rail(84, 105),
    }
    gpu = to_gpu_metrics(s)
    assert gpu is not None
    assert (gpu.source, gpu.load_pct, gpu.freq_mhz, gpu.temp_c) == ("tegrastats", 43, 76, 22.5)
    assert gpu.power_mw == 0  # the GPU rail (idle), not the board total


def test_nano_without_sudo_has_load_but_no_clocks() -> None:
    s = parse_line(lines("nano")[0])
    assert s.ram == Memory(330, 3964, 758, 4)
    assert s.gpu == Engine(True, 15, None)
    assert s.emc == Engine(True, 0, None)
    assert s.iram is None
    assert s.temperatures["thermal"] == 22.5
    assert [c.load_pct for c in s.cpus] == [17, 37, 53, 18]


def test_orin_sudo_date_mw_rails_and_offline_sensors() -> None:
    s = parse_line(lines("orin-sudo")[0])
    assert s.timestamp == datetime(2023, 1, 3, 16, 7, 54)
    assert s.ram == Memory(2257, 30536, 5392, 4)
    assert s.swap == Swap(0, 15268, 0)
    assert len(s.cpus) == 12
    assert s.cpus[1] == CpuCore(True, 99, 729)
    assert s.gpu == Engine(True, 9, 0)
    assert s.engines["GR3D2"] == Engine(True, 77, 0)
    assert s.engines["NVJPG1"] == Engine(True, None, 729)
    assert s.engines["VIC"] == Engine(True, None, 115)
    assert s.engines["APE"] == Engine(True, None, 233)
    assert s.temperatures["tj"] == 41.656
    assert s.temperatures["GPU"] == -256.0
    assert s.temperatures["CPU"] == 41.437
    assert s.rails["VDD_GPU_SOC"] == Rail(2390, 2390)
    assert s.rails["VIN_SYS_5V0"] == Rail(3522, 3522)
    assert s.rails["NC"] == Rail(0, 0)
    assert list(s.rails) == ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "NC", "VDDQ_VDD2_1V8AO"]
    gpu = to_gpu_metrics(s)
    assert gpu is not None
    assert gpu.temp_c is None  # GPU@-256C: sensor off, not a temperature
    assert gpu.power_mw == 2390
    assert gpu.load_pct == 9


def test_orin_without_sudo() -> None:
    s = parse_line(lines("orin")[0])
    assert s.timestamp == datetime(2023, 1, 3, 16, 10, 22)
    assert s.gpu == Engine(True, 71, None)
    assert s.rails == {}
    assert s.temperatures["SOC0"] == 38.906
    gpu = to_gpu_metrics(s)
    assert gpu is not None
    assert (gpu.load_pct, gpu.temp_c, gpu.power_mw) == (71, None, None)


def test_tx1_sudo_and_plain() -> None:
    s = parse_line(lines("tx1-sudo")[0])
    assert s.ram == Memory(388, 3984, 779, 4)
    assert s.swap is None
    assert s.gpu == Engine(True, 91, 998)
    assert s.emc == Engine(True, 0, 1600)
    assert s.temperatures["Tdiode"] == 28.5
    assert s.rails == {}
    plain = parse_line(lines("tx1")[0])
    assert plain.gpu is None
    assert [c.freq_mhz for c in plain.cpus] == [204] * 4
    gpu = to_gpu_metrics(plain)
    assert gpu is not None
    assert (gpu.load_pct, gpu.temp_c, gpu.power_mw) == (None, 22, None)


def test_tx2_sudo_mts_and_vdd_rails() -> None:
    s = parse_line(lines("tx2-sudo")[0])
    assert s.ram == Memory(696, 7854, 1675, 4)
    assert (s.mts_fg_pct, s.mts_bg_pct) == (0, 0)
    assert len(s.cpus) == 6
    assert s.gpu == Engine(True, 68, 140)
    assert s.temperatures["thermal"] == 29.2
    assert s.rails["VDD_IN"] == Rail(1383, 1383)
    assert s.rails["VDD_WIFI"] == Rail(364, 335)
    gpu = to_gpu_metrics(s)
    assert gpu is not None
    assert gpu.power_mw == 76  # VDD_GPU, not VDD_IN


def test_tx2_current_and_average_differ() -> None:
    s = parse_line(lines("tx2")[0])
    assert s.rails["VDD_IN"] == Rail(1038, 1134)
    assert s.rails["VDD_IN"].current_mw == 1038
    assert s.rails["VDD_IN"].average_mw == 1134
    assert s.rails["VDD_WIFI"] == Rail(38, 124)
    assert s.temperatures["GPU"] == 28.5


def test_xavier_rails_without_vdd_prefix() -> None:
    s = parse_line(lines("xavier-sudo")[0])
    assert s.ram == Memory(408, 15823, 3702, 4)
    assert s.swap == Swap(0, 7911, 0)
    assert len(s.cpus) == 8
    assert s.gpu == Engine(True, 23, 1377)
    assert s.emc == Engine(True, 0, 2133)
    assert s.temperatures["iwlwifi"] == 30
    assert s.temperatures["thermal"] == 27.45
    assert s.rails["GPU"] == Rail(1155, 1155)
    assert s.rails["SYS5V"] == Rail(2692, 2692)
    assert s.rails["CV"] == Rail(0, 0)
    plain = parse_line(lines("xavier")[0])
    assert plain.rails["SOC"] == Rail(2504, 2503)
    gpu = to_gpu_metrics(plain)
    assert gpu is not None
    assert (gpu.load_pct, gpu.temp_c, gpu.power_mw, gpu.freq_mhz) == (72, 28, 1155, None)


def test_unknown_board_swap_after_cpu_small_lfb_and_codecs() -> None:
    first, second = (parse_line(line) for line in lines("unknown-board"))
    assert first.ram == Memory(4722, 7844, 1, 0.5)
    assert first.swap == Swap(149, 1024, 7)
    assert first.engines["NVENC"] == Engine(True, None, 716)
    assert first.engines["NVDEC"] == Engine(True, None, 716)
    assert first.rails["VDD_GPU"] == Rail(6854, 6903)
    assert first.rails["VDD_DDR"] == Rail(2702, 2702)
    assert first.temperatures["BCPU"] == -45
    assert first.gpu == Engine(True, 73, 1300)
    assert second.gpu == Engine(True, 71, 1300)
    assert [c.freq_mhz for c in first.cpus] == [2035, 2034, 2034, 2035, 2035, 2035]


@pytest.mark.parametrize(
    ("line", "check"),
    [
        (
            "CPU [1%@1510,off,off,4%@1510]",
            lambda s: (
                s.cpus
                == (CpuCore(True, 1, 1510), CpuCore(False), CpuCore(False), CpuCore(True, 4, 1510))
            ),
        ),
        ("cpu [17%,13%]@408", lambda s: s.cpus == (CpuCore(True, 17, 408), CpuCore(True, 13, 408))),
        ("GR3D_FREQ 0%@[305,611]", lambda s: s.gpu == Engine(True, 0, 611)),
        (
            "NVENC off NVDEC off NVDLA0 off PVA0_FREQ off",
            lambda s: (
                s.engines
                == {
                    "NVENC": Engine(False),
                    "NVDEC": Engine(False),
                    "NVDLA0": Engine(False),
                    "PVA0": Engine(False),
                }
            ),
        ),
        ("VIC_FREQ 0%@115", lambda s: s.engines == {"VIC": Engine(True, 0, 115)}),
        (
            "EMC 1%@408 GR3D 3%@76",
            lambda s: (s.emc, s.gpu) == (Engine(True, 1, 408), Engine(True, 3, 76)),
        ),
        ("cpu@47.5C gpu@44.9C", lambda s: to_gpu_metrics(s).temp_c == 44.9),
        (
            "VDD_IN 4966mW/4966mW VDD_CPU_GPU_CV 513mW/513mW",
            lambda s: to_gpu_metrics(s).power_mw == 513,
        ),
        ("POM_5V_IN 2000/1900", lambda s: to_gpu_metrics(s).power_mw == 2000),
        (
            "RAM 1/2GB (lfb 3x1MB) SWAP 5/10kB",
            lambda s: (s.ram, s.swap) == (Memory(1024, 2048, 3, 1), Swap(5 / 1024, 10 / 1024)),
        ),
        (
            "  RAM  330/3964MB   (lfb 758x4MB)\n",
            lambda s: s.ram == Memory(330, 3964, 758, 4) and s.unparsed == (),
        ),
    ],
)
def test_format_variants_of_other_releases(line, check) -> None:
    sample = parse_line(line)
    assert check(sample), sample
    assert sample.unparsed == ()


def test_unknown_tokens_are_reported_not_dropped() -> None:
    s = parse_line("RAM 330/3964MB (lfb 758x4MB) FOO@bar NEWFIELD 12ms GPU@22.5C")
    assert s.ram == Memory(330, 3964, 758, 4)
    assert s.unparsed == ("FOO@bar", "NEWFIELD", "12ms")
    assert s.temperatures == {"GPU": 22.5}


def test_bad_cpu_entry_and_bad_date_are_reported() -> None:
    s = parse_line("13-45-2023 99:00:00 CPU [5%@100,weird,off]")
    assert s.timestamp is None
    assert s.unparsed[:2] == ("13-45-2023", "99:00:00")
    assert s.cpus == (CpuCore(True, 5, 100), CpuCore(True), CpuCore(False))
    assert "CPU[1]=weird" in s.unparsed


def test_a_line_without_fields_is_not_a_sample() -> None:
    s = parse_line("tegrastats: error: permission denied")
    assert not s.recognised
    assert to_gpu_metrics(s) is None
    assert s.unparsed == ("tegrastats:", "error:", "permission", "denied")
    assert not parse_line("").recognised


def test_truncated_ram_is_unparsed_but_the_rest_parses() -> None:
    s = parse_line("RAM 331/39 GR3D_FREQ 43%@76")
    assert s.ram is None
    assert s.unparsed == ("RAM", "331/39")
    assert s.gpu == Engine(True, 43, 76)


def test_huge_numbers_do_not_raise() -> None:
    s = parse_line("RAM " + "9" * 5000 + "/1MB GR3D_FREQ " + "9" * 5000 + "%")
    assert s.ram is None
    assert s.gpu is None
    assert s.unparsed


_REAL_TOKENS = sorted({tok for _, _, line in ALL_LINES for tok in line.split()})


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_any_text_never_raises(text: str) -> None:
    sample = parse_line(text)
    assert isinstance(sample.unparsed, tuple)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_REAL_TOKENS) | st.text(max_size=12), max_size=40))
def test_fuzz_shuffled_real_tokens_never_raise(tokens: list[str]) -> None:
    sample = parse_line(" ".join(tokens))
    to_gpu_metrics(sample)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([line for _, _, line in ALL_LINES]), st.data())
def test_fuzz_truncated_real_lines_never_raise(line: str, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, len(line)))
    end = data.draw(st.integers(start, len(line)))
    sample = parse_line(line[start:end])
    to_gpu_metrics(sample)
    # every character is either parsed or reported
    if line[start:end].strip() and not sample.recognised:
        assert sample.unparsed


# --- the reader, with a fake tegrastats executable ---------------------------------


def fake_tool(tmp_path: Path, body: str, name: str = "tegrastats") -> Path:
    """An executable with tegrastats' interface: ``tegrastats --interval MS``."""
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\nimport sys, time, signal, pathlib\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def printer(lines_: list[str], then: str) -> str:
    return (
        f"pathlib.Path(__file__).with_suffix('.args').write_text(' '.join(sys.argv[1:]))\n"
        f"for line in {lines_!r}:\n"
        f"    print(line, flush=True)\n"
        f"    time.sleep(0.01)\n"
        f"{then}\n"
    )


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_reader_keeps_latest_sample_and_passes_interval(tmp_path: Path) -> None:
    tool = fake_tool(
        tmp_path, printer(lines("unknown-board") + lines("tx2-sudo"), "time.sleep(600)")
    )
    reader = TegrastatsReader(tool, interval_ms=250)
    with reader:
        assert reader.wait_for_sample(10) is not None
        assert wait_until(lambda: reader.samples == 3)
        latest = reader.latest()
        assert latest is not None
        assert latest.gpu == Engine(True, 68, 140)  # the tx2 line, printed last
        assert (tmp_path / "tegrastats.args").read_text() == "--interval 250"
        assert reader.running
    assert not reader.running
    assert reader.stop_reason == "stopped by stop()"


def test_reader_skips_lines_without_fields(tmp_path: Path) -> None:
    tool = fake_tool(
        tmp_path, printer(["Warning: not root", lines("tx1")[0], "garbage"], "time.sleep(600)")
    )
    with TegrastatsReader(tool) as reader:
        assert reader.wait_for_sample(10) is not None
        time.sleep(0.2)
        assert reader.samples == 1
        sample = reader.latest()
        assert sample is not None
        assert sample.ram == Memory(385, 3984, 779, 4)


def test_reader_restarts_with_backoff_then_gives_up(tmp_path: Path) -> None:
    tool = fake_tool(tmp_path, "print('tegrastats: cannot open /sys', flush=True)\nsys.exit(3)")
    reader = TegrastatsReader(tool, max_restarts=2, backoff_s=0.05, max_backoff_s=0.1)
    started = time.monotonic()
    reader.start()
    assert wait_until(lambda: not reader.running)
    assert time.monotonic() - started >= 0.15  # 0.05 + 0.1: backed off, did not spin
    assert reader.restarts == 2
    assert reader.latest() is None
    assert reader.stop_reason is not None
    assert "exited with code 3" in reader.stop_reason
    assert "cannot open /sys" in reader.stop_reason
    assert "gave up after 3 runs" in reader.stop_reason
    assert reader.wait_for_sample(0.1) is None


def test_reader_restarts_a_tool_that_exits_after_output(tmp_path: Path) -> None:
    tool = fake_tool(tmp_path, printer(lines("nano"), "sys.exit(0)"))
    reader = TegrastatsReader(tool, max_restarts=1, backoff_s=0.05)
    with reader:
        assert wait_until(lambda: reader.samples >= 3)
        assert reader.restarts >= 2  # output resets the failure count: it keeps restarting
        assert reader.running


def test_stop_kills_a_tool_that_ignores_sigterm(tmp_path: Path) -> None:
    body = "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + printer(
        lines("nano"), "time.sleep(600)"
    )
    reader = TegrastatsReader(fake_tool(tmp_path, body), stop_timeout_s=0.3)
    reader.start()
    assert reader.wait_for_sample(10) is not None
    started = time.monotonic()
    reader.stop()
    assert not reader.running
    assert time.monotonic() - started < 5


def test_reader_refuses_a_missing_tool_and_a_double_start(tmp_path: Path) -> None:
    with pytest.raises(TegrastatsError, match="not found or not executable"):
        TegrastatsReader(tmp_path / "nope").start()
    plain = tmp_path / "plain"
    plain.write_text("not executable")
    assert not TegrastatsReader.available(plain)
    with pytest.raises(TegrastatsError, match="interval"):
        TegrastatsReader(plain, interval_ms=0)
    tool = fake_tool(tmp_path, printer(lines("nano"), "time.sleep(600)"))
    with TegrastatsReader(tool) as reader, pytest.raises(TegrastatsError, match="already started"):
        reader.start()


@pytest.mark.jetson
def test_real_tegrastats_on_a_jetson() -> None:
    if not Path("/etc/nv_tegra_release").exists():
        pytest.skip("not a Jetson: /etc/nv_tegra_release is absent")
    if not TegrastatsReader.available():
        pytest.skip("no executable /usr/bin/tegrastats")
    with TegrastatsReader(interval_ms=200) as reader:
        sample = reader.wait_for_sample(10)
    assert sample is not None, reader.stop_reason
    assert sample.ram is not None
    assert sample.cpus
    assert sample.gpu is not None
    assert to_gpu_metrics(sample) is not None
    print("unparsed tokens on this board:", sample.unparsed)
