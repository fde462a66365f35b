"""`snaptun serve` on damaged state: exit 2, one line naming the file, no traceback."""

from __future__ import annotations

import os
import pwd
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import dsa

from snaptun.gateway.state_dir import StateFiles, ensure_state
from snaptun.gateway.store import GrantStore
from tests.cli._procs import SNAPTUN, TESTDATA, _env
from tests.gateway.test_state_dir import write_pair

RUN_TIMEOUT = 30.0
GARBAGE = b"this is not what the file should hold\n" * 4


def serve(
    state: Path, *extra: str, as_user: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    argv = [
        *as_user,
        *SNAPTUN,
        "serve",
        "--state-dir", str(state),
        "--listen", "127.0.0.1:0",
        "--metrics", "127.0.0.1:0",
        "--underlay-bind", "127.0.0.1:0",
        "--underlay-next-hop", "127.0.0.1:9",
        *extra,
    ]  # fmt: skip
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=RUN_TIMEOUT, env=_env(), check=False
    )


def assert_one_line_about(done: subprocess.CompletedProcess[str], path: Path, problem: str) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "panic" not in done.stderr.lower()
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line.startswith(f"snaptun serve: {path}: {problem}"), line
    assert "; " in line.partition(problem)[2]  # followed by what to do
    assert done.stdout == ""  # never got to "listening"
    return line


@pytest.mark.parametrize(
    ("name", "problem", "remedy"),
    [
        ("key.pem", "not an unencrypted PEM private key", "delete cert.pem and key.pem"),
        ("cert.pem", "not a PEM certificate", "delete cert.pem and key.pem"),
        ("grants.sqlite3", "not an SQLite database", "move it aside"),
        ("signing-key.pem", "not an Ed25519 private key", "delete signing-key.pem"),
        ("signing-key.pub.pem", "not an Ed25519 key", "delete signing-key.pem"),
    ],
)
def test_a_damaged_state_file_is_named_and_kept(
    tmp_path: Path, name: str, problem: str, remedy: str
) -> None:
    files, _ = ensure_state(tmp_path)
    (files.root / name).write_bytes(GARBAGE)
    line = assert_one_line_about(serve(tmp_path), files.root / name, problem)
    assert remedy in line
    assert (files.root / name).read_bytes() == GARBAGE  # not overwritten: the operator decides


def test_a_dev_key_without_its_public_half_is_checked_too(tmp_path: Path) -> None:
    files, _ = ensure_state(tmp_path)
    files.signing_key.write_bytes(GARBAGE)
    files.signing_public_key.unlink()  # start-up would derive it from the private key
    assert_one_line_about(serve(tmp_path), files.signing_key, "not an Ed25519 private key")
    assert not files.signing_public_key.exists()


def test_a_bad_token_key_flag_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "token.pub.pem"
    bad.write_bytes(GARBAGE)
    line = assert_one_line_about(
        serve(tmp_path / "state", "--token-key", str(bad)), bad, "not an Ed25519 key"
    )
    assert "--token-key" in line
    missing = tmp_path / "absent.pem"
    done = serve(tmp_path / "state", "--token-key", str(missing))
    assert_one_line_about(done, missing, "cannot be read: No such file or directory")


def test_bad_cert_and_key_flags_are_named(tmp_path: Path) -> None:
    state = tmp_path / "state"
    garbage_key = tmp_path / "server.key"
    garbage_key.write_bytes(GARBAGE)
    cert = TESTDATA / "localhost-cert.pem"
    if not cert.exists():
        pytest.skip(f"{cert} is not there")
    done = serve(state, "--cert", str(cert), "--key", str(garbage_key))
    line = assert_one_line_about(done, garbage_key, "not an unencrypted PEM private key")
    assert "--key" in line

    # a valid key that belongs to another certificate
    other = StateFiles(tmp_path / "other")
    ensure_state(other.root)
    done = serve(state, "--cert", str(cert), "--key", str(other.key))
    assert_one_line_about(done, other.key, f"does not belong to the certificate {cert}")


def full_state(root: Path) -> StateFiles:
    """A state directory as a gateway leaves it: keys, certificate and a grant store."""
    files, _ = ensure_state(root)
    GrantStore(files.grants_db).close()
    return files


def _truncate(db: Path) -> None:
    db.write_bytes(db.read_bytes()[:1500])


def _bump_schema(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE schema_version SET version = version + 98")
    conn.close()


def _foreign(db: Path) -> None:
    db.unlink()
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    conn.close()


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (_truncate, "damaged (SQLite: database disk image is malformed)"),
        (_bump_schema, "schema version [99] is not supported"),
        (_foreign, "not a snaptun grant store (tables ['notes'])"),
    ],
    ids=["truncated", "schema-version", "foreign"],
)
def test_a_damaged_grant_store_is_named_and_kept(
    tmp_path: Path, damage: Callable[[Path], None], problem: str
) -> None:
    files = full_state(tmp_path)
    damage(files.grants_db)
    before = files.grants_db.read_bytes()
    line = assert_one_line_about(serve(tmp_path), files.grants_db, problem)
    assert "move it aside" in line
    assert files.grants_db.read_bytes() == before


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("cert.pem", "cannot be read: Is a directory"),
        ("key.pem", "cannot be read: Is a directory"),
        ("signing-key.pem", "cannot be read: Is a directory"),
        ("signing-key.pub.pem", "cannot be read: Is a directory"),
        ("grants.sqlite3", "unable to open database file"),
        ("gateway.lock", "cannot be opened: Is a directory"),
    ],
)
def test_a_directory_where_a_state_file_belongs_is_named(
    tmp_path: Path, name: str, problem: str
) -> None:
    full_state(tmp_path)
    target = tmp_path / name
    if target.exists():
        target.unlink()
    target.mkdir()
    assert_one_line_about(serve(tmp_path), target, problem)


def test_a_state_dir_that_is_no_directory_is_named(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    line = assert_one_line_about(serve(afile), afile, "is not a directory")
    assert "--state-dir" in line
    assert_one_line_about(serve(afile / "state"), afile / "state", "cannot be created: Not a")
    assert afile.read_text() == "x"


@pytest.mark.parametrize(("gone", "kept"), [("key.pem", "cert.pem"), ("cert.pem", "key.pem")])
def test_half_a_certificate_pair_is_named_and_the_rest_kept(
    tmp_path: Path, gone: str, kept: str
) -> None:
    full_state(tmp_path)
    (tmp_path / gone).unlink()
    before = (tmp_path / kept).read_bytes()
    line = assert_one_line_about(
        serve(tmp_path), tmp_path / gone, f"is missing while {kept} is there"
    )
    assert "restore it" in line
    assert (tmp_path / kept).read_bytes() == before
    assert not (tmp_path / gone).exists()


def test_a_traditional_dsa_key_is_named_not_a_rust_panic(tmp_path: Path) -> None:
    cert, key = write_pair(tmp_path, dsa.generate_private_key(2048), traditional=True)
    done = serve(tmp_path / "state", "--cert", str(cert), "--key", str(key))
    line = assert_one_line_about(done, key, "key type DSA is not supported")
    assert "--key" in line


# ---- permissions: root ignores file modes, so these run the gateway as another user ----------


@dataclass(frozen=True)
class ServiceUser:
    """Who the gateway runs as in the permission tests, and how to become them."""

    prefix: list[str]
    uid: int
    gid: int


@pytest.fixture
def service_user() -> ServiceUser:
    if os.geteuid() != 0:
        return ServiceUser([], os.getuid(), os.getgid())
    setpriv = shutil.which("setpriv")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        nobody = None
    if setpriv is None or nobody is None:
        pytest.skip("running as root without setpriv or a 'nobody' user: file modes cannot bite")
    prefix = [setpriv, f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
    probe = subprocess.run(
        [*prefix, *SNAPTUN, "--help"],
        check=False,
        capture_output=True,
        env=_env(),
        timeout=RUN_TIMEOUT,
    )
    if probe.returncode != 0:
        pytest.skip(f"'nobody' cannot run this Python or package: {probe.stderr[-300:]!r}")
    return ServiceUser(prefix, nobody.pw_uid, nobody.pw_gid)


@pytest.fixture
def service_dir(service_user: ServiceUser) -> Iterator[Path]:
    """A folder the service user can reach (pytest's tmp_path is root's own, mode 0700)."""
    top = Path(tempfile.mkdtemp(prefix="snaptun-perm-"))
    top.chmod(0o755)
    try:
        yield top
    finally:
        for folder, _, _ in os.walk(top):
            Path(folder).chmod(0o755)  # so a non-root run can clean up what it made read-only
        shutil.rmtree(top)


def _own(root: Path, user: ServiceUser) -> None:
    for folder, _, names in os.walk(root):
        for path in [Path(folder), *(Path(folder) / name for name in names)]:
            os.chown(path, user.uid, user.gid)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("key.pem", "cannot be read: Permission denied"),
        ("cert.pem", "cannot be read: Permission denied"),
        ("signing-key.pem", "cannot be read: Permission denied"),
        ("signing-key.pub.pem", "cannot be read: Permission denied"),
        ("grants.sqlite3", "unable to open database file"),
        ("gateway.lock", "cannot be opened: Permission denied"),
    ],
)
def test_an_unreadable_state_file_is_named(
    service_user: ServiceUser, service_dir: Path, name: str, problem: str
) -> None:
    files = full_state(service_dir / "state")
    (files.root / "gateway.lock").touch()
    _own(files.root, service_user)
    (files.root / name).chmod(0)
    line = assert_one_line_about(
        serve(files.root, as_user=service_user.prefix), files.root / name, problem
    )
    if "Permission denied" in problem:
        assert "the user running the gateway must be able to" in line


def test_a_read_only_state_dir_is_named(service_user: ServiceUser, service_dir: Path) -> None:
    empty = service_dir / "empty"
    empty.mkdir()
    _own(empty, service_user)
    empty.chmod(0o500)
    done = serve(empty, as_user=service_user.prefix)
    line = assert_one_line_about(done, empty / "gateway.lock", "cannot be opened: Permission")
    assert "write it and the state directory" in line

    # a gateway's full state, then made read-only: the grant store is what needs writing
    files = full_state(service_dir / "full")
    (files.root / "gateway.lock").touch()
    _own(files.root, service_user)
    files.root.chmod(0o500)
    done = serve(files.root, as_user=service_user.prefix)
    assert_one_line_about(done, files.grants_db, "read-only for the gateway")


def test_a_state_dir_in_an_unwritable_folder_is_named(
    service_user: ServiceUser, service_dir: Path
) -> None:
    parent = service_dir / "parent"
    parent.mkdir(mode=0o755)  # root's, or read-only for the user running the tests
    if os.geteuid() != 0:
        parent.chmod(0o555)
    done = serve(parent / "state", as_user=service_user.prefix)
    line = assert_one_line_about(done, parent / "state", "cannot be created: Permission denied")
    assert str(parent) in line.partition("; ")[2]
