"""A local stand-in of the Hub API: `python tests/hub_standin.py RECORD SCRIPT ARGS...` runs SCRIPT with HfApi's
create_repo, create_commit and README validation answered locally, no network.

Each commit becomes RECORD/revision-<n>/, the repository as that commit leaves it (the previous revision's files,
plus the commit's additions, less its deletions), and RECORD/commits.json lists the commits: message, branch and
the paths each one added or deleted. upload_folder itself is huggingface_hub's: it picks the files that go.
A commit whose message is HUB_STANDIN_REFUSE (a variable of the environment) is refused as the Hub refuses one, with
an HfHubHTTPError (403). cache_revision lays a model folder out as a download from the Hub leaves it in the local cache.
"""

import hashlib
import importlib
import json
import os
import runpy
import shutil
import sys
import threading
from pathlib import Path

import huggingface_hub.hf_api
from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi, ModelCard, RepoUrl, constants
from huggingface_hub.errors import HfHubHTTPError

NAMESPACE = "standin-user"
REVISION = "0123456789abcdef0123456789abcdef01234567"  # a commit id, as the cache names a snapshot
_lock = threading.Lock()


def install(record: Path) -> None:
    """Answers the Hub calls of HfApi (every instance, Trainer's too) from `record`."""
    record.mkdir(parents=True, exist_ok=True)
    commits_file = record / "commits.json"
    commits_file.write_text("[]\n")

    def create_repo(self, repo_id: str, **kwargs) -> RepoUrl:
        repo_id = repo_id if "/" in repo_id else f"{NAMESPACE}/{repo_id}"
        return RepoUrl(f"{constants.ENDPOINT}/{repo_id}", endpoint=constants.ENDPOINT)

    def create_commit(self, repo_id: str, operations, *, commit_message: str, revision=None, **kwargs) -> CommitInfo:
        if commit_message == os.environ.get("HUB_STANDIN_REFUSE"):
            http = importlib.import_module(
                HfHubHTTPError.__bases__[0].__module__
            )  # httpx, or huggingface_hub 2's httpx2
            url = f"{constants.ENDPOINT}/api/models/{repo_id}/commit/main"
            response = http.Response(403, request=http.Request("POST", url))
            raise HfHubHTTPError(f"403 Forbidden: no write access to {repo_id}", response=response)
        with _lock:
            commits = json.loads(commits_file.read_text())
            snapshot = record / f"revision-{len(commits)}"
            if commits:
                shutil.copytree(record / f"revision-{len(commits) - 1}", snapshot)
            else:
                snapshot.mkdir()
            added, deleted = [], []
            for operation in operations:
                target = snapshot / operation.path_in_repo
                if isinstance(operation, CommitOperationAdd):
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with operation.as_file() as source:
                        target.write_bytes(source.read())
                    added.append(operation.path_in_repo)
                elif isinstance(operation, CommitOperationDelete):
                    shutil.rmtree(target) if target.is_dir() else target.unlink()
                    deleted.append(operation.path_in_repo)
                else:
                    raise NotImplementedError(f"the stand-in takes additions and deletions, not {operation!r}")
            oid = hashlib.sha1(f"{len(commits)}{commit_message}".encode()).hexdigest()
            commits.append(
                {
                    "revision": snapshot.name,
                    "repo_id": repo_id,
                    "branch": revision or constants.DEFAULT_REVISION,
                    "message": commit_message,
                    "added": sorted(added),
                    "deleted": sorted(deleted),
                }
            )
            commits_file.write_text(json.dumps(commits, indent=2) + "\n")
        url = f"{constants.ENDPOINT}/{repo_id}/commit/{oid}"
        return CommitInfo(commit_url=url, commit_message=commit_message, commit_description="", oid=oid)

    def validate_yaml(self, content: str, **kwargs) -> None:
        ModelCard(content, ignore_metadata_errors=False)  # raises on metadata the Hub would refuse to parse

    HfApi.create_repo = create_repo
    HfApi.create_commit = create_commit
    HfApi._validate_yaml = validate_yaml
    huggingface_hub.hf_api.is_xet_available = lambda: False  # upload_folder's one-commit path: create_commit


def cache_revision(folder: Path, hf_home: Path, repo_id: str) -> Path:
    """`folder`'s files, its checkpoints' too (the Hub's: no data_args.json), as huggingface_hub caches a download
    under `hf_home`: hub/models--org--name/ with blobs/<sha256>, snapshots/<commit>/<path> linking to
    ../../blobs/<sha256> (../ once more a folder down), and refs/main naming the commit; returns the snapshot folder."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != "data_args.json":
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            shutil.copyfile(path, repo / "blobs" / digest)
            link = snapshot / path.relative_to(folder)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(repo / "blobs" / digest, link.parent))
    return snapshot


if __name__ == "__main__":
    install(Path(sys.argv[1]))
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
