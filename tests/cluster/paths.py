"""Where things live (standard library only, so `down` works without the venv)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLUSTER_DIR = REPO / ".cluster"  # git-ignored
BIN_MANIFEST = CLUSTER_DIR / "bin" / "manifest.json"  # written by hack/cluster/build.sh
SESSIONS_DIR = CLUSTER_DIR / "sessions"  # links to the state files of running test clusters
MANIFESTS = Path(__file__).resolve().parent / "manifests"
