#!/usr/bin/env python3
"""Create the MLflow user that studies log as (idempotent), through MLflow's auth REST API.

Reads MLFLOW_TRACKING_URI (the server), MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD
(the admin) and MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (the user to create). Waits
up to MLFLOW_WAIT_SECONDS (120) for the server's /health. Prints no credential.
"""
from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request


def _request(url: str, user: str, password: str, body: dict | None = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    if data:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def main() -> int:
    env = os.environ
    base = env["MLFLOW_TRACKING_URI"].rstrip("/")
    admin, admin_password = env["MLFLOW_AUTH_ADMIN_USERNAME"], env["MLFLOW_AUTH_ADMIN_PASSWORD"]
    user, password = env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]
    deadline = time.monotonic() + float(env.get("MLFLOW_WAIT_SECONDS", "120"))
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            print(f"MLflow at {base} is not healthy", file=sys.stderr)
            return 1
        time.sleep(2)
    if user == admin:
        print(f"studies log as the admin user {admin!r}")
        return 0
    status, body = _request(base + "/api/2.0/mlflow/users/create", admin, admin_password,
                            {"username": user, "password": password})
    if status == 200:
        print(f"created MLflow user {user!r}")
        return 0
    if "RESOURCE_ALREADY_EXISTS" in body:
        print(f"MLflow user {user!r} exists")
        return 0
    print(f"creating MLflow user {user!r} failed: HTTP {status}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
