"""docs/operator-guide.md: every command in it is checked (tests/infra/guide_checks.py). Each
```bash block names its check, each passes it, and each check is shown to reject broken commands
with a message that names the line."""
from __future__ import annotations

import re

import pytest

from tests.infra.guide_checks import CHECKS, COMMAND_LANGUAGES, GUIDE, commands, guide_blocks, unchecked
from tests.infra.infra_files import ROOT

BLOCKS = guide_blocks(GUIDE.read_text())
REPOSITORY_PATH = re.compile(r"(?<![\w/.$-])(?:infra|docs|search_spaces|tests)/[\w./*-]*[\w/*]")


def test_every_command_block_names_a_known_check():
    assert unchecked(BLOCKS) == []


def test_the_guide_uses_every_check():
    assert sorted(set(CHECKS) - {b.check for b in BLOCKS}) == []


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.check or b.language in COMMAND_LANGUAGES],
                         ids=lambda b: b.id)
def test_guide_block_passes_its_check(block):
    assert block.check in CHECKS, unchecked([block])
    problems = CHECKS[block.check](block, BLOCKS)
    assert not problems, "\n".join(problems)


def test_every_repository_path_the_guide_names_exists():
    named = set(REPOSITORY_PATH.findall(GUIDE.read_text()))
    assert sorted(p for p in named if not (list(ROOT.glob(p)) if "*" in p else (ROOT / p).exists())) == []


# --- the checks themselves, on small guides ---------------------------------------------------------

def sample(check: str, *lines: str) -> list[str]:
    """The problems CHECKS[check] finds in a guide of one block of ``lines`` (the first: line 2)."""
    blocks = guide_blocks(f"```bash check={check}\n" + "\n".join(lines) + "\n```\n")
    return CHECKS[check](blocks[0], blocks)


GOOD = {
    "study": ['eval "$(study stack up --folder /tmp/stack)"   # prints the environment',
              "study run search_spaces/quickstart.yaml --dry-run",
              "export RAY_AUTH_MODE=token && study run --address 127.0.0.1:6379 --resume search_spaces/omniglot.yaml",
              "study data fetch all --mirror /path/to/datasets", "study stack down --purge", "study stack up --help"],
    "k8s": ["docker build -f infra/docker/Dockerfile -t registry.example.com/vamp-study:0.1.0 . \\",
            "  && docker push registry.example.com/vamp-study:0.1.0",
            "helm repo add kuberay https://ray-project.github.io/kuberay-helm/",
            "helm upgrade --install kuberay-operator kuberay/kuberay-operator --version 1.7.0 -n kuberay",
            "kubectl apply --server-side -f infra/k8s/crds/",
            "kubectl apply -f infra/k8s/namespace.yaml",
            "kubectl -n vamp-study create secret generic vamp-study-ray-token \\",
            "  --from-literal=auth_token=\"$(python -c 'import secrets; print(secrets.token_urlsafe(32))')\"",
            "kubectl -n vamp-study create secret docker-registry vamp-study-registry --docker-server=r.example.com",
            "kubectl -n vamp-study get secret vamp-study-registry -o name",
            "cd infra/k8s/images",
            "kustomize edit set image registry.example.com/vamp-study=r.example.com/vamp-study:0.1.0@sha256:0a1b",
            "cd ../../..",
            "kubectl apply -k infra/k8s/study && kubectl kustomize infra/k8s/cluster > /dev/null",
            "kubectl -n vamp-study rollout status statefulset/vamp-study-s3 --timeout=5m",
            "kubectl -n vamp-study wait --for=condition=Ready pod/vamp-study-s3-0",
            "kubectl -n vamp-study get rayjob omniglot-study -w",
            "kubectl -n vamp-study logs -f job/omniglot-study          # the submitter's log",
            "kubectl -n vamp-study port-forward svc/vamp-study-s3 8333:8333 &",
            "aws --endpoint-url http://127.0.0.1:8333 s3 sync s3://vamp-study backup/bucket/",
            "kubectl -n vamp-study logs -p vamp-study-s3-0 && kubectl -n vamp-study patch raycluster vamp-study \\",
            "  --type merge -p '{\"spec\": {\"suspend\": false}}'",
            "kubectl -n vamp-study get pvc data-vamp-study-s3-0",
            "kubectl -n vamp-study exec -it $(kubectl -n vamp-study get pod -l ray.io/node-type=head -o name) \\",
            "  -- study status omniglot",
            "kubectl -n vamp-study create configmap vamp-study-spaces --from-file=search_spaces/ \\",
            "  --dry-run=client -o yaml | kubectl apply -f -"],
    "compose": ["cd infra/compose", "cp .env.example .env && chmod 600 .env",
                "$EDITOR .env                  # replace every CHANGE_ME",
                "docker compose config -q", "docker compose build && docker compose up -d", "docker compose ps",
                "docker compose exec ray-head study run --resume /config/spaces/omniglot.yaml",
                "docker compose logs --tail 100 mlflow ray-worker",
                "set -a && . ./.env && set +a",
                'docker compose exec -T postgres psql -U "$POSTGRES_USER" -d mlflow -c "SELECT 1"'],
}


@pytest.mark.parametrize("check", GOOD)
def test_static_checks_accept_good_commands(check):
    assert sample(check, *GOOD[check]) == []


BROKEN = [  # (check, lines: the last one broken, what the message says)
    ("study", ["study run search_spaces/quickstart.yaml --no-such-option"], "No such option: --no-such-option"),
    ("study", ["study stack upp"], "No such command 'upp'"),
    ("study", ["study pull"], "Missing argument"),
    ("study", ['eval "$(ray start --head)"'], "eval runs study commands only"),
    ("study", ["make first-run"], "make is not a program this check knows"),
    ("k8s", ["kubectl apply -f infra/k8s/rayjob.yaml"], "no infra/k8s/rayjob.yaml"),
    ("k8s", ["kubectl apply -k infra/k8s/crds"], "no kustomization.yaml in infra/k8s/crds"),
    ("k8s", ["kubectl -n vamp-study create secret generic vamp-study-ray-token --from-literal=token=x"],
     "missing keys ['auth_token'], unknown keys ['token']"),
    ("k8s", ["kubectl -n vamp-study create secret generic vamp-study-s3 --from-literal=a=b"], "no Secret vamp-study"),
    ("k8s", ["kubectl -n vamp-study create secret docker-registry regcred --docker-server=r"], "vamp-study-registry"),
    ("k8s", ["kubectl -n default get rayjob omniglot-study"], "needs -n vamp-study"),
    ("k8s", ["kubectl get rayjob omniglot-study"], "needs -n vamp-study"),
    ("k8s", ["kubectl -n vamp-study rollout restart deployment/vamp-study-nope"], "no Deployment vamp-study-nope"),
    ("k8s", ["kubectl -n vamp-study logs -f job/no-such-study"], "no Job no-such-study"),
    ("k8s", ["kubectl -n vamp-study get rayjobs omniglot-study-2"], "no RayJob omniglot-study-2"),
    ("k8s", ["helm install kuberay-operator kuberay/kuberay-operator --version 1.1.0"], "holds KubeRay 1.7.0"),
    ("k8s", ["kustomize edit set image registry.example.com/vamp-study=r/v:1"], "cd there first"),
    ("k8s", ["cd infra/k8s/images", "kustomize edit set image vamp-study=r/v:1"], "vamp-study is not an image"),
    ("k8s", ["docker build -f Dockerfile -t x ."], "docker build -f infra/docker/Dockerfile"),
    ("k8s", ["terraform apply"], "terraform is not a program this check knows"),
    ("k8s", ["aws --endpoint-url http://127.0.0.1:8333 s3api delete-bucket --bucket vamp-study"], "only s3 sync"),
    ("compose", ["docker compose logs -f no-such-service"], "no service or profile no-such-service"),
    ("compose", ["docker compose run --rm study run /config/spaces/omniglot.yaml"], "no service or profile study"),
    ("compose", ["docker compose exec ray-head study run --no-such-option x.yaml"], "No such option"),
    ("compose", ["docker compose frobnicate"], "docker compose frobnicate: not one of"),
    ("compose", ["docker volume rm vamp-study_postgres"], "docker volume rm: vamp-study_postgres is not one of"),
    ("compose", ["cp .env.sample .env"], "cp: no file"),
    ("compose", ["docker run --rm alpine true"], "only docker compose"),
    ("compose", ["cd /tmp", "docker compose ps"], "from infra/compose, here"),
    ("compose", ["curl http://127.0.0.1:5000/health"], "curl is not a program this check knows"),
]


@pytest.mark.parametrize("check, lines, message", BROKEN, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(BROKEN)])
def test_static_checks_reject_broken_commands(check, lines, message):
    problems = sample(check, *lines)
    assert len(problems) == 1 and problems[0].startswith(f"line {len(lines) + 1}: `{lines[-1]}`: "), problems
    assert message in problems[0]


def test_blocks_without_a_known_check_are_reported():
    blocks = guide_blocks("```bash\nls\n```\n\n```bash check=nope\nls\n```\n\n```text\nls\n```\n\n"
                          "  ```bash check=study\n  study --help\n  ```\n")
    assert [b.id for b in blocks] == ["block-01-bash", "block-02-nope", "block-03-text", "block-04-study"]
    assert blocks[3].text == "study --help" and blocks[3].line == 14
    problems = unchecked(blocks)
    assert len(problems) == 2 and "without check=" in problems[0] and "unknown check=nope" in problems[1]


def test_commands_are_split_as_the_shell_splits_them():
    block = guide_blocks('```bash check=k8s\nA=1 B="x y" kubectl get pods && echo "a && b" | base64  # note\n'
                         'kubectl -n vamp-study \\\n  exec -it $(kubectl get pod -o name) -- study status x 2>&1 >out\n'
                         '# a comment\n```\n')[0]
    found = commands(block)
    assert [c.words for c in found] == [["kubectl", "get", "pods"], ["echo", "a && b"], ["base64"], [
        "kubectl", "-n", "vamp-study", "exec", "-it", "__SUBST0__", "--", "study", "status", "x"]]
    assert [c.line for c in found] == [2, 2, 2, 3]
    assert found[3].substitutions == {"__SUBST0__": "kubectl get pod -o name"}


# --- the checks that run blocks, on local servers ----------------------------------------------------

LOAD_ENV = "set -a && . ./.env && set +a"
S3_ADMIN = ('AWS_ACCESS_KEY_ID="$S3_ADMIN_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$S3_ADMIN_SECRET_KEY" '
            "AWS_DEFAULT_REGION=us-east-1")
BACKUP = [LOAD_ENV, "mkdir -p backup",
          "for db in mlflow mlflow_auth optuna; do",
          '  docker compose exec -T postgres pg_dump -U "$POSTGRES_USER" -Fc "$db" > "backup/$db-$(date +%F).dump"',
          "done",
          f"{S3_ADMIN} \\",
          '  aws --endpoint-url http://127.0.0.1:8333 s3 sync "s3://$STUDY_BUCKET" backup/bucket/']
RESTORE = [LOAD_ENV, "DATE=$(date +%F)   # the backup's", "docker compose stop mlflow",
           "for db in mlflow mlflow_auth optuna; do",
           '  docker compose exec -T postgres pg_restore -U "$POSTGRES_USER" --clean --if-exists -d "$db" \\',
           '    < "backup/$db-$DATE.dump"',
           "done",
           f"{S3_ADMIN} aws --endpoint-url http://127.0.0.1:8333 s3 sync backup/bucket/ \"s3://$STUDY_BUCKET\"",
           "docker compose start mlflow"]


def restore(lines: list[str]) -> list[str]:
    """The problems of a compose-restore block of ``lines`` after the compose-backup block BACKUP."""
    blocks = guide_blocks("".join(f"```bash check={c}\n" + "\n".join(lines) + "\n```\n"
                                  for c, lines in (("compose-backup", BACKUP), ("compose-restore", lines))))
    return CHECKS["compose-restore"](blocks[1], blocks)


def test_backup_and_restore_blocks_run():
    assert restore(RESTORE) == []


def test_restore_check_wants_mlflow_stopped_while_it_writes_postgresql():
    unstopped = [line for line in RESTORE if not line.startswith(("docker compose stop", "docker compose start"))]
    problems = restore(unstopped)
    assert problems == ["mlflow must be stopped (docker compose stop mlflow) before the restore writes PostgreSQL, "
                        "and started after it"]


@pytest.mark.parametrize("lines, line, message", [
    ([line for line in BACKUP if line != LOAD_ENV], 4, "POSTGRES_USER: unbound variable"),  # .env not loaded
    ([line.replace("exec -T", "exec") for line in BACKUP], 5, "does not implement: docker compose exec postgres"),
], ids=["env-not-loaded", "exec-without-T"])
def test_backup_check_rejects_broken_blocks(lines, line, message):
    problems = sample("compose-backup", *lines)
    assert len(problems) == 1 and problems[0].startswith(f"line {line}: `{lines[line - 2].strip()}`"), problems
    assert message in problems[0]
