"""The rendezvous preflight (trainer/preflight): its diagnoses, met on real sockets on loopback, and
the chart's `preflight` init container rendered by the real helm.

The torch part (process group, all-reduce, bandwidth) runs in real processes in
tests/integration/test_preflight_local.py and in every 2-node test of tests/unit/test_local_runner.py.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from launcher import client, helm
from tests.chat import ONE_ROW
from trainer.preflight import PreflightError
from trainer.preflight.__main__ import main
from trainer.preflight.collective import backends
from trainer.preflight.join import reach
from trainer.preflight.rank0 import check_own_address, gather, listen, port_reusable
from trainer.preflight.rendezvous import Rendezvous, resolve

LOOPBACK = [(socket.AF_INET, ("127.0.0.1", 0))]


def rendezvous(port: int, nodes: int = 2, timeout: float = 1.0, job: str = "job-abc12") -> Rendezvous:
    return Rendezvous(job, "127.0.0.1", port, nodes, timeout)


def at(port: int) -> list[tuple[int, tuple[str, int]]]:
    return [(socket.AF_INET, ("127.0.0.1", port))]


class Background:
    """Runs `fn` in a thread; `.result()` re-raises what it raised."""

    def __init__(self, fn: Callable[[], Any]):
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except BaseException as e:  # handed to the test thread
            self.error = e

    def result(self, timeout: float = 30) -> BaseException | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the thread did not end"
        return self.error


def rank0(rdv: Rendezvous, listener: socket.socket, wait: float) -> Background:
    import time

    return Background(lambda: gather(rdv, listener, time.monotonic() + wait))


def deadline(seconds: float) -> float:
    import time

    return time.monotonic() + seconds


# --- arguments --------------------------------------------------------------------------------

ARGS = ["--job", "j", "--rank", "0", "--nodes", "2", "--addr", "127.0.0.1", "--port", "29500",
        "--timeout", "30", "--backend", "auto", "--size-mib", "64"]  # fmt: skip


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--rank", "$(JOB_COMPLETION_INDEX)", "--rank is '$(JOB_COMPLETION_INDEX)': it must be an integer from 0 to 1"),
        ("--rank", "2", "--rank is '2': it must be an integer from 0 to 1 (JOB_COMPLETION_INDEX"),
        ("--port", "70000", "--port is '70000': it must be an integer from 1 to 65535 (the chart value job.port)"),
        ("--backend", "mpi", "--backend is 'mpi': use one of auto, gloo, nccl"),
        ("--addr", "$(KUBETUNE_MASTER_ADDR)", "set KUBETUNE_MASTER_ADDR to rank 0's host name"),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument(flag: str, value: str, message: str, capsys: Any) -> None:
    args = list(ARGS)
    args[args.index(flag) + 1] = value
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("[kubetune] error: preflight: ") and message in err


def test_backends_follow_the_choice_and_the_device() -> None:
    assert backends("auto", has_gpu=False) == ["gloo"]
    assert backends("auto", has_gpu=True) == ["gloo", "nccl"]
    assert backends("gloo", has_gpu=True) == ["gloo"]
    assert backends("nccl", has_gpu=True) == ["gloo", "nccl"]
    with pytest.raises(PreflightError, match="preflight.backend is `nccl` but this pod sees no GPU"):
        backends("nccl", has_gpu=False)


# --- rank 0's address and port ----------------------------------------------------------------


def test_a_name_that_never_resolves_names_the_headless_service() -> None:
    rdv = Rendezvous("job-abc12", "job-abc12-0.job-abc12.invalid", 29500, 2, 1.0)
    with pytest.raises(PreflightError) as e:
        resolve(rdv, deadline(1.0))
    message = str(e.value)
    assert message.startswith("rank 0's address job-abc12-0.job-abc12.invalid did not resolve within 1 s")
    assert "headless Service 'job-abc12'" in message and "publishNotReadyAddresses: true" in message
    assert "kubectl get pods -l kubetune.dev/submission=job-abc12" in message


def test_a_resolving_name_gives_its_addresses() -> None:
    addresses = resolve(Rendezvous("j", "localhost", 29500, 2, 1.0), deadline(5))
    assert any(sockaddr[0] in ("127.0.0.1", "::1") for _, sockaddr in addresses)


def test_rank_0_refuses_an_address_that_is_not_its_own() -> None:
    rdv = Rendezvous("j", "192.0.2.1", 29500, 2, 1.0)  # TEST-NET-1: never an address of this machine
    with pytest.raises(PreflightError, match="192.0.2.1 is 192.0.2.1, which is not an address of this pod"):
        check_own_address(rdv, [(socket.AF_INET, ("192.0.2.1", 29500))])
    check_own_address(rdv, LOOPBACK)  # loopback is this machine's


def test_a_port_in_use_is_named() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(PreflightError) as e:
            listen(port)
    assert str(e.value).startswith(f"port {port} is already in use on rank 0's pod")
    assert "job.port" in str(e.value)


# --- the hello between ranks ------------------------------------------------------------------


def test_ranks_meet_and_leave_the_port_bindable_without_reuse(tmp_path: Path) -> None:
    listener = listen(0)
    port = listener.getsockname()[1]
    rdv = rendezvous(port, nodes=3, timeout=10)
    with listener:
        server = rank0(rdv, listener, 10)
        peers = [Background(lambda r=r: reach(rdv, r, at(port), deadline(10))) for r in (1, 2)]
        assert [p.result() for p in peers] == [None, None]
        assert server.result() is None
    # the ranks closed first, so no TIME_WAIT is left on the port: even a bind without SO_REUSEADDR works
    with socket.socket() as s:
        s.bind(("0.0.0.0", port))
    port_reusable(port, wait=0)


def test_a_missing_rank_is_named_by_rank_0_and_the_others_hear_it() -> None:
    listener = listen(0)
    port = listener.getsockname()[1]
    rdv = rendezvous(port, nodes=3, timeout=1)
    with listener:
        server = rank0(rdv, listener, 1.0)
        with pytest.raises(PreflightError) as joined:
            reach(rdv, 1, at(port), deadline(1.0))
        missing = server.result()
    assert isinstance(missing, PreflightError)
    assert str(missing).startswith("rank(s) 2 never joined within 1 s (2 of 3 ranks here")
    assert "is pod 2 Pending or failing?" in str(missing)
    assert "batch.kubernetes.io/job-completion-index=2 -c preflight" in str(missing)
    assert str(joined.value).startswith(f"rank 0 at 127.0.0.1:{port} ended the rendezvous (it closed the connection)")


def test_a_closed_port_is_refused_until_the_deadline() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PreflightError) as e:
        reach(rendezvous(port), 1, at(port), deadline(1.0))
    assert str(e.value).startswith(f"rank 0 at 127.0.0.1:{port} refused connections for 1 s")
    assert "Did rank 0 start" in str(e.value) and "NetworkPolicy" in str(e.value)


def test_another_service_on_the_port_is_not_taken_for_rank_0() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]

        def answer() -> None:
            conn, _ = other.accept()
            with conn:
                conn.recv(512)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        server = Background(answer)
        with pytest.raises(PreflightError, match="did not answer as rank 0's preflight"):
            reach(rendezvous(port), 1, at(port), deadline(5))
        assert server.result() is None


def test_ranks_told_different_node_counts_fail_on_both_sides() -> None:
    listener = listen(0)
    port = listener.getsockname()[1]
    with listener:
        server = rank0(rendezvous(port, nodes=2, timeout=10), listener, 10)
        with pytest.raises(PreflightError) as e:
            reach(rendezvous(port, nodes=3, timeout=10), 1, at(port), deadline(10))
        error = server.result()
    expected = "rank 1 (127.0.0.1) was told the job has 3 nodes, rank 0 was told 2"
    assert str(e.value).startswith(expected) and str(error).startswith(expected)


def test_a_pod_of_another_job_is_turned_away_and_rank_0_keeps_waiting() -> None:
    listener = listen(0)
    port = listener.getsockname()[1]
    with listener:
        server = rank0(rendezvous(port, timeout=2), listener, 2.0)
        with pytest.raises(PreflightError, match=f"rank 0 at 127.0.0.1:{port} belongs to job job-abc12, not other-x"):
            reach(rendezvous(port, job="other-x"), 1, at(port), deadline(2))
        assert str(server.result()).startswith("rank(s) 1 never joined")


def test_rank_0_ignores_a_connection_that_says_nothing_it_knows() -> None:
    listener = listen(0)
    port = listener.getsockname()[1]
    rdv = rendezvous(port, timeout=10)
    with listener:
        server = rank0(rdv, listener, 10)
        with socket.create_connection(("127.0.0.1", port)) as stray:  # a port scanner, a probe
            stray.sendall(b"GET / HTTP/1.0\r\n\r\n")
            try:
                answer = stray.recv(64)
            except ConnectionResetError:  # closed with our bytes unread: a reset, not an answer
                answer = b""
            assert answer == b""
        reach(rdv, 1, at(port), deadline(10))
        assert server.result() is None


# --- the chart's init container ---------------------------------------------------------------


def rendered_pod(tmp_path: Path, nodes: int, **extra_values: Any) -> dict[str, Any]:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "pf", "base_model": "org/model", "data": {"train": "s3://b/train.jsonl"},
        "resources": {"gpu": "none", "nodes": nodes, "memory": "24Gi"}, "output": {"uri": "s3://b/out/"},
    }))  # fmt: skip
    sub = client.prepare(spec)
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump(extra_values))
    job = next(m for m in helm.parse_manifests(client.render(sub, [extra])) if m["kind"] == "Job")
    return job["spec"]["template"]["spec"]


@pytest.mark.usefixtures("helm_binary")
def test_multi_node_pods_run_the_preflight_first_as_the_trainer_would(tmp_path: Path) -> None:
    pod = rendered_pod(tmp_path, nodes=2)
    (init,) = pod["initContainers"]
    (trainer,) = pod["containers"]
    assert init["name"] == "preflight"
    assert init["command"] == ["python", "-m", "trainer.preflight"]
    args = dict(zip(init["args"][::2], init["args"][1::2], strict=True))
    main_args = dict(zip(trainer["args"][::2], trainer["args"][1::2], strict=True))
    assert args == {
        "--job": trainer_env(trainer)["KUBETUNE_JOB_NAME"],
        "--rank": "$(JOB_COMPLETION_INDEX)",
        "--nodes": main_args["--num_machines"],
        "--addr": main_args["--main_process_ip"],
        "--port": main_args["--main_process_port"],
        "--timeout": "1800",
        "--backend": "auto",
        "--size-mib": "64",
    }
    for key in ("image", "imagePullPolicy", "securityContext", "resources"):
        assert init[key] == trainer[key], key
    api_duties = {"KUBETUNE_PROGRESS_JOB", "KUBETUNE_EXPORT_JOB", "KUBETUNE_EXPORT_QUEUE"}  # need the API token
    assert init["env"] == [e for e in trainer["env"] if "value" in e and e["name"] not in api_duties]  # no credentials
    trainer_mounts = {m["mountPath"]: m["name"] for m in trainer["volumeMounts"]}
    assert {m["mountPath"]: m["name"] for m in init["volumeMounts"]}.items() <= trainer_mounts.items()


def trainer_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


@pytest.mark.usefixtures("helm_binary")
def test_preflight_values_reach_the_init_container(tmp_path: Path) -> None:
    pod = rendered_pod(tmp_path, nodes=3, preflight={"timeoutSeconds": 900, "backend": "nccl", "allReduceMiB": 0})
    args = pod["initContainers"][0]["args"]
    assert args[args.index("--timeout") + 1] == "900" and args[args.index("--nodes") + 1] == "3"
    assert args[args.index("--backend") + 1] == "nccl" and args[args.index("--size-mib") + 1] == "0"


@pytest.mark.usefixtures("helm_binary")
@pytest.mark.parametrize(("nodes", "values"), [(1, {}), (2, {"preflight": {"enabled": False}})])
def test_no_preflight_for_one_node_or_when_disabled(nodes: int, values: dict[str, Any], tmp_path: Path) -> None:
    assert "initContainers" not in rendered_pod(tmp_path, nodes=nodes, **values)


@pytest.mark.usefixtures("helm_binary")
@pytest.mark.parametrize(
    ("preflight", "where"),
    [({"backend": "mpi"}, "/preflight/backend"), ({"timeoutSeconds": 0}, "/preflight/timeoutSeconds"),
     ({"timeout": 30}, "timeout")],
)  # fmt: skip
def test_bad_preflight_values_are_rejected(preflight: dict[str, Any], where: str, tmp_path: Path) -> None:
    chart = Path(helm.chart_dir())
    values = tmp_path / "bad.yaml"
    values.write_text(yaml.safe_dump({"preflight": preflight}))
    done = subprocess.run(
        [helm.find_helm(), "template", "x", str(chart), "-f", str(chart / "ci" / "cpu-values.yaml"), "-f", str(values)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode != 0 and where in done.stderr, done.stderr


def test_local_runs_wait_less(tmp_path: Path) -> None:
    from launcher.backends.local import PREFLIGHT_TIMEOUT

    (tmp_path / "train.jsonl").write_text(ONE_ROW)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "pf", "base_model": "org/m", "data": {"train": "train.jsonl"},
                                    "resources": {"gpu": "none", "nodes": 2}}))  # fmt: skip
    defaults = yaml.safe_load((Path(helm.chart_dir()) / "values.yaml").read_text())["preflight"]
    assert client.prepare(spec, local=True).values["preflight"] == {"timeoutSeconds": PREFLIGHT_TIMEOUT}
    assert defaults["timeoutSeconds"] > PREFLIGHT_TIMEOUT
    assert defaults["timeoutSeconds"] >= 1800  # on an autoscaled pool: a GPU node provisioned, then the image pulled


# --- waiting for ranks that start late (nodes provisioned, images pulled) -----------------------


def test_each_wait_says_what_it_waits_for(capsys: Any) -> None:
    listener = listen(0)
    port = listener.getsockname()[1]
    rdv = Rendezvous("job-abc12", "127.0.0.1", port, 3, 10.0, report_every=0.3)
    with listener:
        server = rank0(rdv, listener, 10)
        early = Background(lambda: reach(rdv, 1, at(port), deadline(10)))
        time.sleep(1.2)  # rank 2's node is still being provisioned
        assert reach(rdv, 2, at(port), deadline(10)) is None
        assert early.result() is None and server.result() is None
    out = capsys.readouterr().out
    waiting = [line for line in out.splitlines() if "rank 0 waiting for rank(s)" in line]
    assert waiting and all("rank 0 waiting for rank(s) 2 (2 of 3 ranks here)" in line for line in waiting), out
    assert "`launch status job-abc12` say why" in waiting[0] and " s so far, giving up in " in waiting[0]
    assert "joined rank 0, which still waits for other ranks" in out


def test_a_rank_waiting_for_rank_0_says_so_and_still_gets_in(capsys: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rdv = Rendezvous("job-abc12", "127.0.0.1", port, 2, 10.0, report_every=0.3)
    early = Background(lambda: reach(rdv, 1, at(port), deadline(10)))
    time.sleep(1.2)  # rank 0's pod is Pending
    with listen(port) as listener:
        gather(rdv, listener, deadline(10))
    assert early.result() is None
    out = capsys.readouterr().out
    assert f"rank 0 at 127.0.0.1:{port} does not answer yet (connection refused)" in out, out


def test_an_unresolved_name_is_reported_while_it_is_retried(capsys: Any) -> None:
    rdv = Rendezvous("job-abc12", "job-abc12-0.job-abc12.invalid", 29500, 2, 2.0, report_every=0.5)
    with pytest.raises(PreflightError):
        resolve(rdv, deadline(2.0))
    assert "rank 0's address job-abc12-0.job-abc12.invalid does not resolve yet" in capsys.readouterr().out


def test_the_process_group_does_not_wait_as_long_as_the_ranks_do() -> None:
    assert Rendezvous("j", "h", 1, 2, 1800.0).group_timeout == 300
    assert Rendezvous("j", "h", 1, 2, 30.0).group_timeout == 30


def test_the_report_interval_is_an_optional_argument(capsys: Any) -> None:
    assert main([*ARGS, "--report-every", "0"]) == 2
    assert "--report-every is '0': it must be an integer from 1 to 3600" in capsys.readouterr().err
