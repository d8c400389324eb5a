"""The command line as an operator and Ansible use it."""

from hwsflow import cli
from hwsflow.wire.sflow import DatagramBuilder
from hwsflow.wire.pcap import write_udp_pcap
from tests.helpers.paths import REPO



def test_check_config_accepts_the_example(capsys):
    assert cli.main(["check-config", str(REPO / "etc/hwsflow.yaml")]) == 0
    assert "ok" in capsys.readouterr().out


def test_check_config_and_run_reject_a_bad_file_with_status_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("targets: ['192.0.2.1:6343']\nports:\n  - name: eth0\n    samplig: 10\n")
    assert cli.main(["check-config", str(bad)]) == 2
    assert cli.main(["run", "--config", str(bad)]) == 2  # before any tc state is touched
    err = capsys.readouterr().err
    assert str(bad) in err and "ports[0].samplig" in err


def test_check_config_and_run_list_every_problem_of_the_file(tmp_path, capsys):
    """A bad sampling, a port rule with a bad sampling and an unknown key: three lines, one run."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("targets: ['192.0.2.1:6343']\nsampling: 0\nports:\n  - name: eth0\n    sampling: -1\n"
                   "  - name: eth1\n    hedaer: 64\n")
    for argv in (["check-config", str(bad)], ["run", "--config", str(bad)]):
        assert cli.main(argv) == 2
        lines = capsys.readouterr().err.splitlines()
        assert lines == [
            f"hwsflow: config error: {bad}: sampling: must be from 1 to 4294967295, got 0",
            f"hwsflow: config error: {bad}: ports[0].sampling: must be from 1 to 4294967295, got -1",
            f"hwsflow: config error: {bad}: ports[1].hedaer: unknown key; did you mean 'header'?",
        ], lines


def test_decode_prints_datagrams_from_a_pcap(tmp_path, capsys):
    builder = DatagramBuilder("192.0.2.1")
    builder.add_flow_sample(5, 1, 0, 3, 10, 10, 0, 3, 0, 64, 4, bytes(60))
    builder.flush(5)
    pcap = tmp_path / "s.pcap"
    pcap.write_bytes(write_udp_pcap(builder.take()))
    assert cli.main(["decode", "--pcap", str(pcap)]) == 0
    out = capsys.readouterr().out
    assert "agent=192.0.2.1" in out and "rate=10" in out and "in=3" in out
