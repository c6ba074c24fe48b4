"""docs/operator-guide.md."""
from __future__ import annotations

from tests.infra.infra_files import ROOT


def test_operator_guide_covers_the_deployment():
    guide = (ROOT / "docs" / "operator-guide.md").read_text()
    for needle in ("infra/compose/compose.yaml", "infra/k8s/rayjob.yaml", "infra/k8s/s3.yaml", "study stack up",
                   "pg_dump", "aws --endpoint-url", "s3 sync", "weed mini", "down --purge", "s3-data",
                   "RAY_AUTH_TOKEN", "STUDY_CACHE_DIR", "checkpoint_", "weights.pt",
                   "update-password", "MLFLOW_TRACKING_PASSWORD"):
        assert needle in guide, needle
