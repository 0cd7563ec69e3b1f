"""Every signal that asks the process to end, and every way its output can go, keeps a trained model: SIGTERM,
SIGHUP and SIGXCPU act as Ctrl-C does, a reader of the output that goes away (`| head -2`) counts as SIGPIPE,
closed or failing standard streams cost nothing but their output, and a signal during the imports ends the
command with one line."""

import os
import signal
import subprocess
import sys
import time

import pytest

import fastmnist
from fastmnist import cli, interrupts
from fastmnist.errors import TrainingInterrupted
from fastmnist.interrupts import Terminated

CWD = os.path.dirname(os.path.abspath(__file__))
TRAIN = ["train", "--preset", "grokking-3layer", "--backend", "numpy"]
RUN = dict(preset="grokking-3layer", iterations=30, eval_every=10, hidden=8, progress=False)


def command(*args):
    return [sys.executable, "-m", "fastmnist", *args]


def environment(**changes):
    """The tests' environment without PYTHONUNBUFFERED: the command must not rely on it to write each line."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return {**env, **changes}


# -- in this process ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP", "SIGXCPU"])
def test_a_termination_signal_stops_training_after_the_iteration_as_ctrl_c_does(signal_backend, name):
    signum = getattr(signal, name)
    before = signal.getsignal(signum)
    with interrupts.termination_signals_raise():
        with pytest.raises(TrainingInterrupted) as info:
            fastmnist.train(backend=signal_backend({2: [signum]}), **RUN)
    assert signal.getsignal(signum) == before, "the handlers are put back"
    stop = info.value
    assert stop.signum == signum and interrupts.exit_status(stop) == 128 + signum
    assert f"terminated by {name} after iteration 2" in str(stop)
    assert stop.result.model.meta["interrupted"] is True and stop.result.model.meta["iterations_done"] == 3


def test_a_second_sigterm_stops_at_once_and_a_repeated_sigxcpu_does_not(signal_backend):
    with interrupts.termination_signals_raise():
        with pytest.raises(Terminated) as info:
            fastmnist.train(backend=signal_backend({1: [signal.SIGTERM, signal.SIGTERM]}), **RUN)
        assert not isinstance(info.value, TrainingInterrupted) and info.value.signum == signal.SIGTERM
        # the kernel sends SIGXCPU again each second of CPU time past the soft limit: that is not a second request
        with pytest.raises(TrainingInterrupted) as info:
            fastmnist.train(backend=signal_backend({1: [signal.SIGXCPU, signal.SIGXCPU]}), **RUN)
        assert info.value.result.model.meta["iterations_done"] == 2


def test_outside_the_command_line_only_ctrl_c_is_taken_over(signal_backend):
    """A program that uses fastmnist keeps its own SIGTERM: training changes only Python's Ctrl-C handler."""
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        result = fastmnist.train(backend=signal_backend({1: [signal.SIGTERM]}), **dict(RUN, iterations=3))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [signal.SIGTERM] and result.model.meta["iterations_done"] == 3


def test_a_signal_while_the_model_is_saved_waits_until_it_is_saved(tmp_path, signal_backend):
    result = fastmnist.train(backend=signal_backend({}), **dict(RUN, iterations=1))
    out = tmp_path / "m.npz"
    with pytest.raises(KeyboardInterrupt):
        with interrupts.signals_held():
            signal.raise_signal(signal.SIGINT)
            result.model.save(out)
    assert fastmnist.load(out).meta["iterations_done"] == 1


class FailingStdout:
    """A standard output whose writes fail as a pipe whose reader went away, or a full disk, makes them."""

    def __init__(self, exc):
        self.exc, self.written = exc, []

    def write(self, text):
        raise self.exc

    def flush(self):
        pass

    def isatty(self):
        return False


@pytest.mark.parametrize("exc, status", [(BrokenPipeError(32, "Broken pipe"), 141),
                                         (OSError(28, "No space left on device"), 1)])
def test_output_that_cannot_be_written_ends_a_command_with_its_status_and_no_traceback(monkeypatch, capsys,
                                                                                      tmp_path, exc, status):
    report = tmp_path / "b.json"
    report.write_text('{"benchmarks": []}')
    monkeypatch.setattr(sys, "stdout", FailingStdout(exc))
    assert cli.main(["bench-report", str(report)]) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err == ("" if status == 141 else "fastmnist: error: the output could not be written: "
                   "No space left on device\n")


def test_the_sweep_command_exits_with_the_signal_that_ended_it(monkeypatch, capsys, tmp_path):
    import fastmnist.sweeps

    def terminated(*args, **kwargs):
        raise Terminated(signal.SIGTERM)
    monkeypatch.setattr(fastmnist.sweeps, "sweep", terminated)
    assert cli.main(["sweep", "--preset", "grokking-3layer", "--out", str(tmp_path / "s.jsonl")]) == 143
    err = capsys.readouterr().err
    assert err.startswith("fastmnist: terminated by SIGTERM; the 0 finished runs are kept in ")


# -- the command line, in its own process -------------------------------------------------------------

def first_line_then(signum, out, iterations="350", **popen):
    p = subprocess.Popen(command(*TRAIN, "--iterations", iterations, "--out", str(out)), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=CWD, env=environment(), **popen)
    try:
        first = p.stdout.readline()
        assert first.startswith("I:0 "), first + p.stderr.read()
        p.send_signal(signum)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        p.kill()
    return p.returncode, first + stdout, stderr


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_a_termination_signal_on_the_cli_saves_the_model_trained_so_far(tmp_path, name):
    out = tmp_path / "t.npz"
    status, stdout, stderr = first_line_then(getattr(signal, name), out)
    assert status == 128 + getattr(signal, name), stderr
    assert "Traceback" not in stderr and f"terminated by {name} after iteration" in stderr
    assert f"the model trained so far is saved in {out}" in stderr and f"saved {out}" in stdout
    model = fastmnist.load(out)
    assert model.meta["interrupted"] is True and 1 <= model.meta["iterations_done"] < 350


def test_a_reader_of_the_output_that_goes_away_stops_training_and_keeps_the_model(tmp_path):
    """`train --out m.npz | head -2`: the third line finds no reader."""
    out = tmp_path / "m.npz"
    p = subprocess.Popen(command(*TRAIN, "--iterations", "350", "--set", "eval_every=1", "--out", str(out)),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=CWD, env=environment())
    try:
        lines = [p.stdout.readline(), p.stdout.readline()]       # each line arrives as it is reported
        p.stdout.close()
        stderr = p.stderr.read().decode()
        p.wait(timeout=120)
    finally:
        p.kill()
    assert lines[0].startswith(b"I:0 ") and lines[1].startswith(b"I:1 "), lines
    assert p.returncode == 141, stderr
    assert "Traceback" not in stderr and "the reader of the output went away (SIGPIPE) after iteration" in stderr
    model = fastmnist.load(out)
    assert model.meta["interrupted"] is True and model.meta["iterations_done"] < 350
    assert f"saved in {out}" in stderr


@pytest.mark.parametrize("redirect", ["2>&-", ">&- 2>&-", ">/dev/full"])
def test_closed_or_failing_standard_streams_cost_only_their_output(tmp_path, redirect):
    out = tmp_path / "m.npz"
    shell = f'exec "$@" {redirect}'
    r = subprocess.run(["sh", "-c", shell, "sh", *command(*TRAIN, "--iterations", "2", "--out", str(out))],
                       capture_output=True, text=True, cwd=CWD, env=environment(), timeout=300)
    model = fastmnist.load(out)
    assert model.meta["iterations_done"] == 2 and "interrupted" not in model.meta
    if redirect == ">/dev/full":
        assert r.returncode == 1 and r.stderr == ("fastmnist: error: the output could not be written: "
                                                  "No space left on device\n")
    else:
        assert r.returncode == 0 and r.stderr == ""
    if redirect == "2>&-":
        assert f"saved {out}" in r.stdout


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_during_the_imports_ends_the_command_with_one_line(name):
    """Sent once numpy is loaded, that is while fastmnist's modules are being imported."""
    p = subprocess.Popen(command("backends"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=CWD,
                         env=environment())
    try:
        maps = f"/proc/{p.pid}/maps"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with open(maps) as f:
                if "_multiarray_umath" in f.read():
                    break
            time.sleep(0.001)
        p.send_signal(getattr(signal, name))
        stdout, stderr = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 128 + getattr(signal, name), stderr
    assert stderr == f"fastmnist: {'interrupted' if name == 'SIGINT' else 'terminated by ' + name}\n"


@pytest.mark.parametrize("orig_argv, expected", [
    (["python", "-m", "fastmnist", "train"], True),
    (["python", "-X", "dev", "-mfastmnist"], True),
    (["/venv/bin/python", "/venv/bin/fastmnist", "sweep"], True),
    (["python", "-m", "pytest", "-m", "fastmnist"], False),
    (["python", "-c", "from multiprocessing.spawn import spawn_main; spawn_main()", "--multiprocessing-fork"], False),
    (["python", "script.py", "fastmnist"], False),
])
def test_only_the_command_itself_counts_as_the_command(monkeypatch, orig_argv, expected):
    """A sweep's workers inherit the `fastmnist` script's sys.argv: they must not take its signal handling."""
    from fastmnist import stdio
    monkeypatch.setattr(sys, "orig_argv", orig_argv)
    monkeypatch.setattr(sys, "argv", ["/venv/bin/fastmnist", "sweep"])
    assert stdio.run_as_command() is expected


def test_a_signal_while_the_cli_saves_the_model_ends_the_command_once_it_is_saved(tmp_path, monkeypatch, capsys):
    out = tmp_path / "m.npz"
    real_save = fastmnist.Model.save

    def save(self, path):
        signal.raise_signal(signal.SIGTERM)         # arrives in the middle of writing the file
        return real_save(self, path)
    monkeypatch.setattr(fastmnist.Model, "save", save)
    assert cli.main([*TRAIN, "--iterations", "1", "--quiet", "--out", str(out)]) == 143
    assert capsys.readouterr().err == f"fastmnist: terminated by SIGTERM; the model is saved in {out}\n"
    assert fastmnist.load(out).meta["iterations_done"] == 1
