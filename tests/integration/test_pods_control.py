"""The control plane's side door: tests and demos in another process steer it over HTTP (no Docker needed)."""

from __future__ import annotations

from deploy.dev.runpod_server import RunPodServer


def test_controls_answer_over_http_with_the_api_key() -> None:
    import json
    import urllib.error
    import urllib.request

    plane = RunPodServer(docker_client=None, pod_image="unused").start()
    try:
        def post(payload: dict, key: str = "rp-test-key") -> tuple[int, dict]:
            req = urllib.request.Request(f"{plane.url}/control", data=json.dumps(payload).encode(),
                                         headers={"Authorization": f"Bearer {key}"})
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    return resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        assert post({"action": "refuse_capacity", "gpu": "NVIDIA L40S"}) == (200, {"pods": {}})
        assert "NVIDIA L40S" in plane._refused
        assert post({"action": "public_ip", "value": False})[0] == 200 and plane.public_ip is False
        assert post({"action": "nonsense"})[0] == 400
        assert post({"action": "public_ip", "value": True}, key="wrong")[0] == 401 and plane.public_ip is False
    finally:
        plane.stop()
