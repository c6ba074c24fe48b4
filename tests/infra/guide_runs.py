"""The operator guide's blocks that run for real (the compose-backup and compose-restore checks of
guide_checks.py): a stand-in for infra/compose on this machine, on real PostgreSQL and SeaweedFS
servers (study.stack), with a ``docker`` that implements only what the blocks may use."""
from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from study.stack.postgres import PG_BIN
from tests.infra.infra_files import ENV_EXAMPLE, env_variables, load_compose, rendered_compose

if TYPE_CHECKING:
    from study.stack import PostgresServer, S3Server
    from tests.infra.guide_checks import Block

GUIDE_S3 = "http://127.0.0.1:8333"  # compose's published S3 port, as the guide's blocks name it
SEED_DATABASES = ("mlflow", "mlflow_auth", "optuna")
SEED_OBJECTS = {"mlflow/1/0123abcd/artifacts/model/weights.pt": b"weights",
                "ray/omniglot-vae/trial_0/checkpoint_000001/state.pkl": b"state"}
SHIM = '''#!{python}
"""docker as the guide check stands it in: `compose exec -T postgres CMD...` runs CMD here against
the local PostgreSQL; `compose stop|start` of the other services is logged only; nothing else."""
import json, os, sys
config, args = json.loads({config!r}), sys.argv[1:]
with open(config["log"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if args[:3] == ["compose", "exec", "-T"] and len(args) > 4 and args[3] in config["services"]:
    os.execvpe(args[4], args[4:], config["services"][args[3]])
if args[:2] in (["compose", "stop"], ["compose", "start"]) and len(args) > 2 and set(args[2:]) <= set(config["idle"]):
    sys.exit(0)
sys.exit("docker (the guide check's stand-in) does not implement: docker " + " ".join(args))
'''


@dataclass
class LocalCompose:
    """``root``/compose stands in for infra/compose: its .env is .env.example's with the PostgreSQL
    and S3 values of the local servers, and ``root``/bin/docker is SHIM."""
    root: Path
    postgres: PostgresServer
    s3: S3Server

    @property
    def folder(self) -> Path:
        return self.root / "compose"

    @property
    def values(self) -> dict[str, str]:
        return {**env_variables(ENV_EXAMPLE), "POSTGRES_PASSWORD": self.postgres.password,
                "S3_ADMIN_ACCESS_KEY": self.s3.access_key, "S3_ADMIN_SECRET_KEY": self.s3.secret_key}

    def prepare(self) -> None:
        """Write .env and the docker stand-in (postgres: the service's environment, rendered by
        Compose from that .env, pointed at the local server); fill the databases and the bucket."""
        for folder in (self.folder, self.root / "bin", self.root / "home"):
            folder.mkdir(parents=True)
        (self.folder / ".env").write_text("".join(f"{k}={v}\n" for k, v in self.values.items()))
        postgres = {**rendered_compose(self.folder / ".env")["services"]["postgres"]["environment"], "PGHOST": "127.0.0.1",
                    "PGPORT": str(self.postgres.port), "PGPASSWORD": self.postgres.password,
                    "PATH": f"{PG_BIN}:/usr/bin:/bin"}
        config = {"log": str(self.root / "docker.log"), "services": {"postgres": postgres},
                  "idle": sorted(set(load_compose()["services"]) - {"postgres", "s3"})}
        shim = self.root / "bin" / "docker"
        shim.write_text(SHIM.format(python=sys.executable, config=json.dumps(config)))
        shim.chmod(0o755)
        for database in SEED_DATABASES:
            with self.connect(database) as conn:
                conn.execute("CREATE TABLE guide_check (id int PRIMARY KEY, note text)")
                conn.execute("INSERT INTO guide_check VALUES (1, %s), (2, 'second')", (database,))
        self.s3.create_bucket(self.values["STUDY_BUCKET"])
        for key, body in SEED_OBJECTS.items():
            self.s3.client().put_object(Bucket=self.values["STUDY_BUCKET"], Key=key, Body=body)

    def connect(self, database: str):
        """A psycopg connection to ``database`` of the local server."""
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.postgres.port, user=self.postgres.user,
                               password=self.postgres.password, dbname=database, autocommit=True)

    def run(self, block: Block) -> list[str]:
        """Run ``block`` with bash -eu -o pipefail in ``folder``, the guide's S3 endpoint made the
        local server's (the only change); a failure names its guide line."""
        text = block.text.replace(GUIDE_S3, self.s3.endpoint_url)
        if text == block.text:
            return [f"{block.id}: never reaches S3 at {GUIDE_S3}"]
        script = self.root / f"{block.id}.sh"  # line N of the script is line N of the guide
        script.write_text("trap 'echo \"guide line $LINENO failed\" >&2' ERR" + "\n" * (block.line - 1) + text + "\n")
        (self.root / "docker.log").write_text("")  # the docker calls of this run only
        env = {"PATH": f"{self.root / 'bin'}:{PG_BIN}:{Path(sys.executable).parent}:/usr/bin:/bin",
               "HOME": str(self.root / "home"), "LANG": "C.UTF-8"}
        result = subprocess.run(["bash", "--noprofile", "--norc", "-eu", "-o", "pipefail", str(script)],
                                cwd=self.folder, env=env, capture_output=True, text=True, timeout=300)
        if result.returncode == 0:
            return []
        lines = block.text.splitlines()
        named = [int(n) for n in re.findall(r"line (\d+)", result.stderr)] or [block.line]
        line = max(block.line, min(named[-1], block.line + len(lines) - 1))
        return [f"line {line}: `{lines[line - block.line].strip()}`: exit {result.returncode}: "
                f"{result.stderr.strip()[-1500:]}"]

    def backup_problems(self) -> list[str]:
        """What the backup lacks: per database a DATABASE[-*].dump that pg_restore --list reads,
        the bucket's objects."""
        files, problems = [p for p in self.folder.rglob("*") if p.is_file()], []
        for database in SEED_DATABASES:
            dumps = [p for p in files if re.fullmatch(rf"{database}(-.*)?\.dump", p.name)]
            listing = subprocess.run([PG_BIN / "pg_restore", "--list", *dumps[-1:]], capture_output=True, text=True)
            if not dumps or listing.returncode or "TABLE public guide_check" not in listing.stdout:
                problems.append(f"no dump of {database} that pg_restore --list reads {listing.stderr.strip()}")
        for key, body in SEED_OBJECTS.items():
            if not any(p.as_posix().endswith(f"/{key}") and p.read_bytes() == body for p in files):
                problems.append(f"s3://{self.values['STUDY_BUCKET']}/{key} is not in the backup")
        return problems

    def damage(self) -> None:
        """Lose the data: drop each database's table, delete the bucket's objects."""
        for database in SEED_DATABASES:
            with self.connect(database) as conn:
                conn.execute("DROP TABLE guide_check")
        for key in SEED_OBJECTS:
            self.s3.client().delete_object(Bucket=self.values["STUDY_BUCKET"], Key=key)

    def restore_problems(self) -> list[str]:
        """What the restore did not bring back; and mlflow must be stopped while it writes PostgreSQL."""
        problems = []
        for database in SEED_DATABASES:
            with self.connect(database) as conn:
                exists = conn.execute("SELECT 1 FROM pg_tables WHERE tablename = 'guide_check'").fetchone()
                if not exists or conn.execute("SELECT note FROM guide_check ORDER BY id").fetchall() != [
                        (database,), ("second",)]:
                    problems.append(f"{database}: the table guide_check and its rows are not back")
        for key, body in SEED_OBJECTS.items():
            try:
                back = self.s3.client().get_object(Bucket=self.values["STUDY_BUCKET"], Key=key)["Body"].read()
            except Exception as error:  # noqa: BLE001 - a missing object
                back = error
            if back != body:
                problems.append(f"s3://{self.values['STUDY_BUCKET']}/{key} is not back: {back}")
        calls = [json.loads(line) for line in (self.root / "docker.log").read_text().splitlines()]
        writes = [i for i, call in enumerate(calls) if call[:4] == ["compose", "exec", "-T", "postgres"]]
        stops = [i for i, call in enumerate(calls) if call[:2] == ["compose", "stop"] and "mlflow" in call]
        starts = [i for i, call in enumerate(calls) if call[:2] == ["compose", "start"] and "mlflow" in call]
        if not (writes and stops and starts and stops[0] < writes[0] and starts[-1] > writes[-1]):
            problems.append("mlflow must be stopped (docker compose stop mlflow) before the restore writes "
                            "PostgreSQL, and started after it")
        return problems


@contextlib.contextmanager
def local_compose():
    """A prepared LocalCompose, its servers stopped and its folder removed afterwards."""
    from study.stack import PostgresServer, S3Server

    with tempfile.TemporaryDirectory(prefix="guide-") as tmp:
        root = Path(tmp)
        postgres = PostgresServer(root / "postgres", user=env_variables(ENV_EXAMPLE)["POSTGRES_USER"],
                                  databases=SEED_DATABASES[1:])
        s3 = S3Server(root / "s3")
        try:
            postgres.start()
            s3.start()
            stack = LocalCompose(root, postgres, s3)
            stack.prepare()
            yield stack
        finally:
            s3.remove()
            postgres.remove()
