"""Status figures: per-port sample rates from 1 s readings, and the table the CLI prints."""

from __future__ import annotations

from hwsflow.core.status import NOT_IN_HW_NOTE, RateMeter, render


def test_rate_meter_averages_over_its_window_and_remembers_the_last_sample():
    meter = RateMeter(window=2)
    for second, count in enumerate([0, 10, 30, 30, 30]):
        meter.update(float(second), {7: count})
    assert meter.rate(7) == 0.0  # the last two seconds saw nothing
    assert meter.age(7, 4.0) == 2.0  # the count last moved at t=2
    meter.update(5.0, {})  # the port went away
    assert meter.rate(7) == 0.0 and meter.age(7, 5.0) is None


def _status(**port) -> dict:
    row = {"port": "eno1", "ifindex": 2, "groups": [1000], "rate": 10, "direction": "ingress", "offload": "in_hw",
           "samples_per_s": 12.5, "samples": 99, "drops": 3, "pool": 990, "last_sample_age_s": 0.5,
           "runtime": False, "error": None} | port
    return {
        "agent": {"version": "0", "pid": 1, "uptime_s": 65.0, "address": "192.0.2.1", "config": "/etc/x.yaml",
                  "psample": "joined", "enobufs": 4, "kernel_drops": 17, "samples": 99, "foreign": 0,
                  "malformed": 0, "sample_path": "python (HWSFLOW_PURE_PYTHON is set)"},
        "ports": [row], "disabled": ["eth9"],
        "collectors": [{"target": "192.0.2.10:6343", "sent": 5, "errors": 1, "last_error": "ECONNREFUSED"}],
    }


def test_render_shows_every_figure_and_explains_not_in_hw_and_runtime_changes():
    text = render(_status(offload="not_in_hw", runtime=True))
    header, row = [line.split() for line in text.splitlines()[3:5]]
    assert header == ["PORT", "IFINDEX", "GROUP", "RATE", "DIRECTION", "OFFLOAD", "SAMPLES/S", "DROPS", "POOL",
                      "LAST", "FROM"]
    assert row == ["eno1", "2", "1000", "1-in-10", "ingress", "not_in_hw", "12.5", "3", "990", "<1s", "runtime"]
    assert "4 ENOBUFS, 17 messages dropped by the kernel" in text
    assert "sample path: python (HWSFLOW_PURE_PYTHON is set)" in text.splitlines()[0]
    assert NOT_IN_HW_NOTE in text and "disabled at runtime (until reload or restart): eth9" in text
    assert "192.0.2.10:6343  5     1       ECONNREFUSED" in text
    assert NOT_IN_HW_NOTE not in render(_status())


def test_render_names_reloads_and_the_metrics_endpoint_only_when_there_are_some():
    status = _status()
    assert "reloads" not in render(status) and "metrics" not in render(status)
    status["agent"].update(reloads={"applied": 2, "rejected": 1}, metrics="[::1]:9465")
    text = render(status)
    assert "reloads: 2 applied, 1 rejected" in text and "metrics: http://[::1]:9465/metrics" in text


def test_render_names_internal_errors_only_when_there_are_some():
    status = _status()
    assert "internal errors" not in render(status)
    status["agent"]["internal_errors"] = 2
    assert "internal errors: 2 psample batches dropped" in render(status)
