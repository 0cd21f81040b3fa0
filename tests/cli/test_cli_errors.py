"""Bad input: exactly one `Error:` line naming the problem, one `Try:` hint,
a non-zero exit, no traceback, nothing changed on disk."""

import os
import subprocess
import sys

import pytest

from blockmirror.cli import main


def run_main(capsys, argv):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    return code, err


def assert_one_error(code, err, *needles):
    assert code not in (0, None), err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("Error: ")]
    tries = [line for line in err.splitlines() if line.startswith("Try: ")]
    assert len(errors) == 1 and len(tries) == 1, err
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0], tries[0]


@pytest.mark.parametrize("command", ["status", "verify"])
@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "soon"])
def test_timeout_must_be_more_than_zero(capsys, tmp_path, command, value):
    code, err = run_main(capsys, [command, str(tmp_path), f"--timeout={value}"])
    assert code == 2
    assert_one_error(code, err, "--timeout", "more than 0 seconds")


def test_status_timeout_zero_as_user_runs_it(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "blockmirror", "status", str(tmp_path), "--timeout", "0"],
                          capture_output=True, text=True)
    assert_one_error(proc.returncode, proc.stderr, "more than 0 seconds")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("value", ["0", "-1", "3601", "nan"])
@pytest.mark.parametrize("flag", ["--link-timeout", "--heartbeat-interval", "--reconnect-max"])
def test_link_seconds_say_what_is_allowed(capsys, tmp_path, flag, value):
    code, err = run_main(capsys, ["primary", str(tmp_path), "--nbd", "127.0.0.1:0", f"{flag}={value}"])
    assert code == 2
    assert_one_error(code, err, flag, "more than 0 and at most 3600 seconds")


@pytest.mark.parametrize("command, required", [
    ("primary", ["--nbd", "127.0.0.1:0"]),
    ("secondary", ["--listen", "127.0.0.1:0", "--secret-file", "/nonexistent/secret"]),
])
@pytest.mark.parametrize("heartbeat, timeout", [("10", "5"), ("5", "5"), ("2", None)])
def test_heartbeat_must_be_below_link_timeout(capsys, tmp_path, command, required, heartbeat, timeout):
    argv = [command, str(tmp_path / "node"), *required, "--heartbeat-interval", heartbeat]
    if timeout is not None:
        argv += ["--link-timeout", timeout]
    else:  # the link timeout from the config file (2 s), the heartbeat from the flag
        conf = tmp_path / "c.toml"
        conf.write_text("link-timeout = 2\n")
        argv += ["--config", str(conf)]
    code, err = run_main(capsys, argv)
    _, hint = assert_one_error(code, err, "--heartbeat-interval", "is not below --link-timeout")
    assert "--heartbeat-interval" in hint and "--link-timeout" in hint
    assert not (tmp_path / "node").exists()


def test_heartbeat_from_config_must_be_below_link_timeout(capsys, tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('nbd = "127.0.0.1:0"\nheartbeat-interval = 10\nlink-timeout = 5\n')
    code, err = run_main(capsys, ["primary", str(tmp_path / "node"), "--config", str(conf)])
    assert_one_error(code, err, "heartbeat-interval 10", "link-timeout 5")


@pytest.mark.parametrize("command, line, needles", [
    ("primary", "nbd = 30820", ['nbd = 30820 must be a string "HOST:PORT"']),
    ("primary", 'nbd = ["127.0.0.1:1", "127.0.0.1:2"]', ["nbd = [", 'must be a string "HOST:PORT"']),
    ("primary", 'read-only = "no"', ['read-only = "no" must be a boolean']),
    ("primary", "read-only = 0", ["read-only = 0 must be a boolean"]),
    ("primary", "window = true", ["window = true must be a size"]),
    ("primary", "window = 1.5", ["window = 1.5 must be a size"]),
    ("primary", 'window = "lots"', ['window = "lots"', "cannot parse size"]),
    ("primary", "mode = 1", ["mode = 1 must be one of"]),
    ("primary", 'mode = ["sync"]', ['mode = ["sync"] must be one of']),
    ("primary", 'link-timeout = "5"', ['link-timeout = "5" must be a number of seconds']),
    ("primary", "link-timeout = true", ["link-timeout = true must be a number"]),
    ("primary", "link-timeout = 0", ["link-timeout = 0", "more than 0 and at most 3600 seconds"]),
    ("primary", "secret-file = 5", ["secret-file = 5 must be a string"]),
    ("primary", "pair = 7", ["pair = 7 must be a string"]),
    ("primary", "peer = { host = \"a\" }", ["peer = { host = \"a\" } must be a string"]),
    ("secondary", "listen = 7000", ['listen = 7000 must be a string "HOST:PORT"']),
    ("secondary", "tls-ca = false", ["tls-ca = false must be a string"]),
])
def test_config_values_are_type_checked(capsys, tmp_path, command, line, needles):
    conf = tmp_path / "c.toml"
    conf.write_text(line + "\n")
    code, err = run_main(capsys, [command, str(tmp_path / "node"), "--config", str(conf)])
    _, hint = assert_one_error(code, err, f"config file {conf}: ", *needles)
    assert line.split(" =")[0] in hint
    assert not (tmp_path / "node").exists()


def test_config_bad_value_is_refused_even_when_the_flag_wins(capsys, tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text("nbd = 30820\n")
    code, err = run_main(capsys, ["primary", str(tmp_path / "node"), "--nbd", "127.0.0.1:0", "--config", str(conf)])
    assert_one_error(code, err, "nbd = 30820")


def test_config_window_in_bytes_and_booleans_are_accepted(tmp_path):
    import argparse

    from blockmirror.cli import build_parser
    from blockmirror.cli._daemon import apply_config

    conf = tmp_path / "c.toml"
    conf.write_text('nbd = "127.0.0.1:0"\nwindow = 1048576\nread-only = true\nlink-timeout = 2\n'
                    'heartbeat-interval = 0.5\nmode = "sync"\n')
    args = build_parser().parse_args(["primary", str(tmp_path), "--config", str(conf)])
    apply_config(args, args._parser, {"window": "32MiB", "read_only": False})
    assert isinstance(args, argparse.Namespace)
    assert (args.window, args.read_only, args.link_timeout, args.heartbeat_interval, args.mode) == \
        ("1048576", True, 2.0, 0.5, "sync")


def _secret_cases(tmp_path):
    d = tmp_path / "secrets"
    d.mkdir()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "volume.img"
    big.write_bytes(b"x" * (65 << 10))
    return {"directory": (str(d), str(d / "pair.secret")), "device": ("/dev/null", "/etc/blockmirror/secret"),
            "fifo": (str(fifo), "/etc/blockmirror/secret"), "big": (str(big), "/etc/blockmirror/secret")}


@pytest.mark.parametrize("kind", ["directory", "device", "fifo", "big"])
def test_secret_file_hint_never_overwrites_what_was_given(capsys, tmp_path, kind):
    path, suggested = _secret_cases(tmp_path)[kind]
    before = sorted(os.listdir(tmp_path))
    code, err = run_main(capsys, ["secondary", str(tmp_path / "node"), "--listen", "127.0.0.1:0",
                                  "--secret-file", path])
    _, hint = assert_one_error(code, err, f"secret file {path}")
    assert f"> {path};" not in hint and f"chmod 600 {path} " not in hint
    assert f"--secret-file {suggested};" in hint and f"> {suggested};" in hint
    assert sorted(os.listdir(tmp_path)) == before


def test_primary_secret_file_directory(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "blockmirror", "primary", str(tmp_path / "node"), "--nbd",
                           "127.0.0.1:0", "--peer", "127.0.0.1:1", "--secret-file", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    _, hint = assert_one_error(proc.returncode, proc.stderr, "is a directory")
    assert f"> {tmp_path / 'pair.secret'};" in hint and f"> {tmp_path};" not in hint
