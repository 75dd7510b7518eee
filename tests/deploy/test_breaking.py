"""`make breaking` (part of `make lint`) fails a commit that breaks the wire contract, also in a
shallow clone such as CI's, and passes one that only adds to it."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "node_modules" / ".bin" / "buf"
PROTO = Path("protos/bitware/common/v1/common.proto")


def git(clone: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(clone), *args], check=True, capture_output=True, timeout=60)


def commit(clone: Path, old: str, new: str, message: str) -> subprocess.CompletedProcess[str]:
    """Replaces `old` by `new` in the proto, commits, and runs this tree's `make breaking`."""
    path = clone / PROTO
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    identity = ("-c", "user.name=test", "-c", "user.email=test@localhost")
    git(clone, *identity, "commit", "-qam", message)
    return subprocess.run(
        ["make", "-s", "-f", str(ROOT / "Makefile"), "breaking", f"BUF={BUF}"],
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_removed_field_fails_lint_in_a_shallow_clone(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(
        ["git", "clone", "-q", "--depth", "1", f"file://{ROOT}", str(clone)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    field = "  string user_id = 2;\n"
    added = commit(
        clone, field, field + "  // A field only a test adds.\n  string extra = 99;\n", "add"
    )
    assert added.returncode == 0, added.stdout + added.stderr
    removed = commit(clone, field, "", "remove a field")
    assert removed.returncode != 0
    assert 'field "2" with name "user_id" on message "Principal" was deleted' in removed.stdout
