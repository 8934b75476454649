"""The active env file never ships with the working tree, whatever its name: `fab deploy-runpod --env-file=...`
against the real sshd and S3 server, compared with the same deploy whose settings come from the environment."""

from __future__ import annotations

import re
import sys
import uuid
from pathlib import Path

from tests.harness.fab import run_fab
from tests.harness.waiting import write_dotenv


def shipped_count(stdout: str) -> int:
    match = re.search(r"^code\s+(\d+) files", stdout, re.MULTILINE)
    assert match, stdout
    return int(match.group(1))


def test_the_env_file_named_by_the_flag_is_not_in_the_code_that_ships(tmp_path: Path, ssh_server, s3_server,
                                                                    s3_bucket: str) -> None:
    project = tmp_path / "project"
    (project / "conf").mkdir(parents=True)
    (project / "train.py").write_text("print('train')\n")
    values = {**s3_server.environ(s3_bucket, prefix=f"t-{uuid.uuid4().hex[:8]}"),
              "RUNPOD_HOST": "127.0.0.1", "RUNPOD_PORT": str(ssh_server.port), "RUNPOD_USER": ssh_server.user,
              "RUNPOD_SSH_KEY": str(ssh_server.client_key), "SSH_KNOWN_HOSTS": str(ssh_server.known_hosts),
              "REMOTE_DIR": f"/tmp/gpu-deploy-envfile-{uuid.uuid4().hex[:8]}", "RUNTIME": "native",
              "NATIVE_PYTHON": sys.executable}
    write_dotenv(project / "conf" / "deploy-settings.txt", values)  # a name no pattern knows

    with_flag = run_fab("deploy-runpod", "--dry-run", "--env-file=conf/deploy-settings.txt", cwd=project, timeout=300)
    assert with_flag.returncode == 0, with_flag.stdout + with_flag.stderr
    from_environment = run_fab("deploy-runpod", "--dry-run", cwd=project, env=values, timeout=300)
    assert from_environment.returncode == 0, from_environment.stdout + from_environment.stderr
    # the same tree: only the file the settings came from stays home in the first run
    assert shipped_count(with_flag.stdout) == shipped_count(from_environment.stdout) - 1
    assert values["AWS_SECRET_ACCESS_KEY"] not in with_flag.stdout + with_flag.stderr
