"""Every task that touches the network, in every bad place an endpoint can be: it ends fast, in one sentence.

The bad places (tests/harness/badnet.py, all on loopback): a closed port, a port that accepts and never
answers, a web server that answers with a page, one that answers 401, a name that does not resolve, and
a key file that is not there. The S3 endpoint (AWS_ENDPOINT_URL), the SSH host (RUNPOD_HOST) and
RunPod's API (RUNPOD_API_BASE_URL) are each put there in turn, with the other parts good (moto's S3
server, the session's sshd, a stand-in API) so the bad one is what the task meets. Each run must:

- exit non-zero with one sentence on stderr (``Error: ...``), no traceback and no exception class name;
- take under 10 s of the task's own time, the silent port included (CONNECT_TIMEOUT_SECONDS is 3 here), or,
  when the machine is so loaded that a healthy `fab status` (the control, run among the cases) takes longer
  than 10 s less two silent waits, no more than two silent waits over that control;
- show no credential on stdout or stderr, with and without ``fab --debug``.

All runs go at once through :class:`tests.harness.fabrun.FabRunner` (one fresh forked process per run),
so the whole table costs about as long as its slowest rows.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.dev.embedded import free_port
from tests.harness.badnet import UNRESOLVABLE, Answering, Blackhole, closed_port, good_api
from tests.harness.fab import run_fab
from tests.harness.fabrun import Command, FabRunner, Result

KEY_ID = "AKIDBADENV" + uuid.uuid4().hex[:10].upper()
SECRET = "badenv-secret-" + uuid.uuid4().hex
API_KEY = "rp-badenv-" + uuid.uuid4().hex
CREDENTIALS = (KEY_ID, SECRET, API_KEY)
BOUND = 10.0
"""Seconds of the task's own time (imports excluded) a bad environment may cost."""
CONNECT_TIMEOUT = 3
"""CONNECT_TIMEOUT_SECONDS for these runs: a silent port costs each task this long."""
CONTROLS = 6
"""Healthy `fab status` runs spread among the cases: what the task's own work costs at this load."""
TB_PORT = str(free_port())
"""fab tensorboard's local port (6006 may be taken on this machine by something else)."""

S3_TASKS = {
    "runs": ["runs"], "runs.show": ["runs.show"], "s3.checkpoints": ["s3.checkpoints"], "s3.check": ["s3.check"],
    "s3.upload-checkpoint": ["s3.upload-checkpoint", "--path", "epoch=1-step=10.ckpt"],
    "s3.download-checkpoint": ["s3.download-checkpoint", "--latest"],
    "s3.upload-logs": ["s3.upload-logs"], "s3.upload-logs --dry-run": ["s3.upload-logs", "--dry-run"],
    "s3.download-logs": ["s3.download-logs"], "s3.upload-dataset": ["s3.upload-dataset", "--path", "ds"],
    "s3.download-dataset": ["s3.download-dataset", "--name", "ds"], "s3.abort-uploads": ["s3.abort-uploads"],
    "images.list": ["images.list"], "images.delete --dry-run": ["images.delete", "team/train:v1", "--dry-run"],
    "images.gc": ["images.gc"], "images.abort-uploads": ["images.abort-uploads"],
    "image-from-s3 --local": ["image-from-s3", "--local"], "tensorboard": ["tensorboard", "--via", "s3", "--port", TB_PORT],
    "deploy-runpod": ["deploy-runpod"], "deploy-runpod --dry-run": ["deploy-runpod", "--dry-run"],
    "status": ["status"], "train": ["train"], "train --dry-run": ["train", "--dry-run"],
    "train.watch": ["train.watch", "20261203-000000-abcd"], "pods": ["pods"],
}
"""Tasks that use the bucket; the host and the API are good when they need them."""
SSH_TASKS = {
    "status": ["status"], "logs": ["logs"], "ssh": ["ssh"], "stop": ["stop"], "stop --dry-run": ["stop", "--dry-run"],
    "sync-from-runpod": ["sync-from-runpod"], "tensorboard --via ssh": ["tensorboard", "--via", "ssh", "--port", TB_PORT],
    "deploy-runpod": ["deploy-runpod"], "deploy-runpod --dry-run": ["deploy-runpod", "--dry-run"],
    "build-ext": ["build-ext"], "build-ext --dry-run": ["build-ext", "--dry-run"],
}
"""Tasks that use an SSH host; the bucket is good."""
API_TASKS = {
    "pods": ["pods"], "pods.gpus": ["pods.gpus"], "pods.up": ["pods.up"], "pods.up --dry-run": ["pods.up", "--dry-run"],
    "pods.down": ["pods.down", "--force"], "train": ["train"], "train --dry-run": ["train", "--dry-run"],
    "train.watch": ["train.watch", "20261203-000000-abcd"],
}
"""Tasks that use RunPod's API; the bucket is good."""
PLACES = ("closed", "blackhole", "html", "401", "dns")
SSH_PLACES = ("closed", "blackhole", "html", "dns", "no key file")

CASES = ([("s3", task, place) for task in S3_TASKS for place in PLACES]
         + [("ssh", task, place) for task in SSH_TASKS for place in SSH_PLACES]
         + [("api", task, place) for task in API_TASKS for place in PLACES])
DEBUG_CASES = ([("s3", task, "html") for task in S3_TASKS] + [("ssh", task, "closed") for task in SSH_TASKS]
               + [("api", task, "html") for task in API_TASKS])
"""Each task once more with ``fab --debug`` where the bad endpoint still answers (signed requests get logged)."""

CLASS_NAME = re.compile(r"\b(gaierror|timeout|[A-Z][A-Za-z]+(Error|Exception|Timeout))\b")


def _ids(cases: list[tuple[str, str, str]]) -> list[str]:
    return [f"{part}-{place}-{task}" for part, task, place in cases]


@pytest.fixture(scope="module")
def places() -> Iterator[dict[str, str]]:
    """host:port of each bad place (``dns``: a name that never resolves)."""
    with Blackhole() as hole, Answering.html() as html, Answering.unauthorized() as unauthorized:
        yield {"closed": f"127.0.0.1:{closed_port()}", "blackhole": f"127.0.0.1:{hole.port}",
               "html": f"127.0.0.1:{html.port}", "401": f"127.0.0.1:{unauthorized.port}",
               "dns": f"{UNRESOLVABLE}:9000"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An operator's folder: a checkpoint file, a logs folder and a dataset folder to upload, an SSH key pair."""
    folder = tmp_path_factory.mktemp("operator")
    (folder / "epoch=1-step=10.ckpt").write_bytes(b"checkpoint")
    (folder / "logs" / "version_0").mkdir(parents=True)
    (folder / "logs" / "version_0" / "events").write_bytes(b"events")
    (folder / "ds").mkdir()
    (folder / "ds" / "metadata.csv").write_text("a|b\n")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / "id_ed25519")], check=True)
    return folder


@pytest.fixture(scope="module")
def results(places, workdir: Path, s3_server, s3_bucket: str, ssh_server) -> Iterator[dict[tuple, Result]]:
    """Every case (and every debug case) run once, all at once."""
    with good_api() as api:
        good = {
            **s3_server.environ(s3_bucket, prefix=f"badenv-{uuid.uuid4().hex[:8]}"),
            "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,  # moto's server checks no signature
            "RUNPOD_API_KEY": API_KEY, "RUNPOD_API_BASE_URL": api.url,
            "RUNPOD_HOST": f"{ssh_server.user}@127.0.0.1:{ssh_server.port}",
            "RUNPOD_SSH_KEY": str(ssh_server.client_key),
            "SSH_KNOWN_HOSTS": str(ssh_server.known_hosts), "REMOTE_DIR": f"/tmp/badenv-{uuid.uuid4().hex[:8]}",
            "POD_PUBLIC_KEY": str(workdir / "id_ed25519.pub"), "GPU_DEPLOY_TENSORBOARD_SECONDS": "1",
            # 3 s, not the default 5: the same bounded wait, with room left in BOUND for a loaded machine
            "CONNECT_TIMEOUT_SECONDS": str(CONNECT_TIMEOUT),
        }
        base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR", "USER")}

        def env(part: str, place: str) -> dict[str, str]:
            bad = dict(good)
            if part == "s3":
                bad["AWS_ENDPOINT_URL"] = f"http://{places[place]}"
            elif part == "api":
                bad["RUNPOD_API_BASE_URL"] = f"http://{places[place]}"
            elif place == "no key file":
                bad["RUNPOD_SSH_KEY"] = str(workdir / "no-such-key")
            else:
                bad["RUNPOD_HOST"] = f"root@{places[place]}"
            return {**base, **bad, "ENV_FILE": ""}

        tasks = {"s3": S3_TASKS, "ssh": SSH_TASKS, "api": API_TASKS}
        commands = {(p, t, pl, False): Command(tasks[p][t], env(p, pl), str(workdir)) for p, t, pl in CASES}
        commands.update({(p, t, pl, True): Command(["--debug", *tasks[p][t]], env(p, pl), str(workdir))
                         for p, t, pl in DEBUG_CASES})
        every = max(1, len(commands) // CONTROLS)
        spread: dict[tuple, Command] = {}
        for i, (key, command) in enumerate(commands.items()):
            if i % every == 0:
                spread[("control", "status", str(i), False)] = Command(["status"], {**base, **good, "ENV_FILE": ""},
                                                                       str(workdir))
            spread[key] = command
        with FabRunner(workers=8) as runner:
            yield runner.run_all(spread)


def _bound(results: dict[tuple, Result]) -> float:
    """BOUND, or two silent waits over the slowest healthy control when the machine is that loaded."""
    controls = [r for key, r in results.items() if key[0] == "control"]
    assert controls and all(r.returncode == 0 for r in controls), [r.stdout + r.stderr for r in controls]
    return max(BOUND, max(r.seconds for r in controls) + 2 * CONNECT_TIMEOUT)


@pytest.mark.parametrize("part,task,place", CASES, ids=_ids(CASES))
def test_a_bad_endpoint_ends_the_task_fast_in_one_sentence(results, part: str, task: str, place: str) -> None:
    result = results[(part, task, place, False)]
    said = (f"fab {' '.join(result.args)} -> {result.returncode} in {result.seconds:.1f} s\n"
            f"{result.stdout}{result.stderr}")
    assert result.returncode != 0, said
    assert "Traceback" not in result.stdout + result.stderr, said
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and lines[0].endswith("."), said
    assert not CLASS_NAME.search(lines[0]), said
    assert result.seconds < _bound(results), said
    assert not any(secret in result.stdout + result.stderr for secret in CREDENTIALS), said


@pytest.mark.parametrize("part,task,place", DEBUG_CASES, ids=_ids(DEBUG_CASES))
def test_debug_output_shows_no_credential(results, part: str, task: str, place: str) -> None:
    result = results[(part, task, place, True)]
    text = result.stdout + result.stderr
    assert result.returncode != 0 and text, f"fab {' '.join(result.args)} said nothing"
    leaked = [secret for secret in CREDENTIALS if secret in text]
    assert leaked == [], f"fab {' '.join(result.args)} printed {leaked}"


SENTENCES = {
    ("s3", "closed"): r"Cannot reach the S3 endpoint http://127\.0\.0\.1:\d+: nothing listens on port \d+ of "
                      r"127\.0\.0\.1; check AWS_ENDPOINT_URL \(from the environment\)",
    ("s3", "blackhole"): r"accepted the connection but sent no answer within 3 s; check AWS_ENDPOINT_URL",
    ("s3", "html"): r"is not an S3 API: it answered with a web page \(HTML\)",
    ("s3", "401"): r"is not an S3 API: it answered with HTTP 401",
    ("s3", "dns"): r"the name nothing\.invalid does not resolve; check AWS_ENDPOINT_URL \(from the environment\)",
    ("ssh", "closed"): r"Cannot reach 127\.0\.0\.1:\d+ over SSH: nothing listens on port \d+ of 127\.0\.0\.1; "
                       r"check RUNPOD_HOST \(from the environment\)",
    ("ssh", "blackhole"): r"accepted the connection but sent no SSH greeting within 3 s",
    ("ssh", "html"): r"accepted the connection but sent no SSH greeting within 3 s",
    ("ssh", "dns"): r"the name nothing\.invalid does not resolve; check RUNPOD_HOST \(from the environment\)",
    ("ssh", "no key file"): r"The SSH key file .*no-such-key does not exist; check RUNPOD_SSH_KEY "
                            r"\(from the environment\)",
    ("api", "closed"): r"Cannot reach the RunPod API at http://127\.0\.0\.1:\d+ while checking the key: nothing "
                       r"listens on port \d+ of 127\.0\.0\.1; check RUNPOD_API_BASE_URL \(from the environment\)",
    ("api", "blackhole"): r"accepted the connection but sent no answer within 3 s; check RUNPOD_API_BASE_URL",
    ("api", "html"): r"is not RunPod's API: it answered a web page \(HTTP 200\)",
    ("api", "401"): r"RunPod refused the API key \(401 from http://127\.0\.0\.1:\d+\); check RUNPOD_API_KEY "
                    r"\(from the environment\)",
    ("api", "dns"): r"the name nothing\.invalid does not resolve; check RUNPOD_API_BASE_URL",
}
"""What each bad place is called, whichever task met it (s3.check names the step it was at, too)."""


@pytest.mark.parametrize("part,task,place", CASES, ids=_ids(CASES))
def test_the_sentence_says_what_happened_and_where_the_value_came_from(results, part: str, task: str,
                                                                        place: str) -> None:
    result = results[(part, task, place, False)]
    line = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    assert re.search(SENTENCES[(part, place)], line), f"fab {' '.join(result.args)}: {line}"


def test_a_dry_run_that_cannot_check_prints_what_it_can_and_fails(results) -> None:
    result = results[("s3", "s3.upload-logs --dry-run", "closed", False)]
    assert "would upload logs (1 files, 6 bytes)" in result.stdout and "not checked: the bucket" in result.stdout
    assert result.stderr.startswith("Error: Dry run incomplete: the bucket")
    result = results[("ssh", "deploy-runpod --dry-run", "closed", False)]
    assert "deploy    gpu-deploy-train:latest to root@127.0.0.1:" in result.stdout and "not checked: the host" \
        in result.stdout
    result = results[("ssh", "build-ext --dry-run", "closed", False)]
    assert "would build on root@127.0.0.1:" in result.stdout and "not checked: the host" in result.stdout
    result = results[("api", "train --dry-run", "html", False)]
    assert "prices not checked" in result.stdout and "not checked: RunPod's API" in result.stdout


def test_fab_debug_runs_against_a_working_bucket_print_no_credential(s3_env: dict[str, str], tmp_path: Path) -> None:
    """The issue's case: `fab --debug runs` printed the access key id in every signed request botocore logged."""
    (tmp_path / "logs" / "version_0").mkdir(parents=True)
    (tmp_path / "logs" / "version_0" / "events").write_bytes(b"e")
    for args in (["runs"], ["s3.checkpoints"], ["s3.upload-logs"], ["images.list"], ["s3.check"]):
        result = run_fab("--debug", *args, env={**s3_env, "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
                                                 "ENV_FILE": ""}, cwd=tmp_path, timeout=180)
        text = result.stdout + result.stderr
        assert result.returncode == 0, text[-3000:]
        assert "botocore" in text and "Authorization" in text  # the debug output is there, and is about requests
        assert KEY_ID not in text and SECRET not in text, f"fab --debug {' '.join(args)} printed a credential"


SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your '
             b'request rate.</Message><RequestId>TEST</RequestId></Error>')


def test_retries_are_said_on_stderr_and_stop_at_the_deadline(s3_env: dict[str, str], tmp_path: Path) -> None:
    """A store that keeps answering 503 SlowDown: each retry is a line, then one sentence, in seconds."""
    with Answering(503, SLOW_DOWN, "application/xml") as busy:
        result = run_fab("s3.checkpoints", env={**s3_env, "AWS_ENDPOINT_URL": busy.url, "ENV_FILE": ""}, cwd=tmp_path,
                         timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("S3 answered 503 SlowDown; retry 1 of 9 in "), result.stderr
    assert all(re.match(r"S3 answered 503 SlowDown; retry \d of 9 in [\d.]+ s$", line) for line in lines[:-1])
    assert lines[-1].startswith(f"Error: S3 error SlowDown on bucket '{s3_env['S3_BUCKET']}' at {busy.url}"), lines[-1]
