"""A source tree with every awkward thing a file system can hold, and a way to compare two trees.

Shared by the library round trip (tests/archiver) and the CLI round trip (tests/cli).
Paths are bytes throughout so that non-UTF-8 names survive.
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import stat
import subprocess

SPARSE_SIZE = 50 * 1024 * 1024 + 5
BIG_SIZE = 20 * 1024 * 1024
DEEP_LEVELS = 100
# Fixed timestamps with nanosecond parts that no file system rounds to by accident.
MTIME_NS = 1_600_000_000_123_456_789
# Outside 64-bit nanoseconds (after 2262-04-11), and before 1970 (negative).
AFTER_2262_NS = 10_413_792_000 * 10**9 + 123_456_789  # 2300-01-01T00:00:00.123456789Z
BEFORE_1970_NS = -315_619_200 * 10**9 + 987_654_321  # 1960-01-01T00:00:00.987654321Z
BIG_XATTR = bytes(range(256)) * 12  # 3,072 bytes
# `setcap cap_net_raw+ep` as the kernel stores it (VFS_CAP_REVISION_2).
CAPABILITY = base64.b64decode("AQAAAgAgAAAAAAAAAAAAAAAAAAA=")


def make_nasty_tree(root: bytes, *, big_size: int = BIG_SIZE, owners: bool = True) -> None:
    """Fill ``root`` (which must exist) with the tree the round-trip tests restore."""
    j = lambda *parts: os.path.join(root, *parts)  # noqa: E731
    os.makedirs(j(b"empty dir"))
    os.makedirs(j(b"sub", b"inner"))
    os.makedirs(j(b"links-a"))
    os.makedirs(j(b"links-b", b"deeper"))
    _write(j("ünïcødé – файл 文件.txt".encode()), "grüße\n".encode() * 10)
    _write(j(b"with spaces and  double  spaces"), b"spaces\n")
    _write(j(b"new\nline"), b"a newline in the name\n")
    _write(j(b"latin1-\xe9\xff\xfe"), b"not UTF-8\n")
    _write(j(b"empty"), b"")
    _write(j(b"sub", b"inner", b"small.bin"), os.urandom(3000))
    rng = random.Random(42)
    _write(j(b"big.bin"), rng.randbytes(big_size))
    _write(j(b"compressible.txt"), b"the same line again and again\n" * 200_000)
    with open(j(b"sparse.img"), "wb") as f:
        f.seek(SPARSE_SIZE - 5)
        f.write(b"tail!")
    os.mkfifo(j(b"a fifo"))
    # Symlinks: to a file, dangling, to a directory, absolute, with an odd target.
    os.symlink(b"compressible.txt", j(b"link-to-file"))
    os.symlink(b"does/not/exist", j(b"dangling"))
    os.symlink(b"sub/inner", j(b"link-to-dir"))
    os.symlink(b"/etc/passwd", j(b"absolute-link"))
    os.symlink(b"latin1-\xe9\xff\xfe", j(b"link-non-utf8"))
    # Three names for one inode, in three folders.
    _write(j(b"links-a", b"one"), b"hard-linked content\n" * 100)
    os.link(j(b"links-a", b"one"), j(b"links-b", b"two"))
    os.link(j(b"links-a", b"one"), j(b"links-b", b"deeper", b"three"))
    # Deep nesting.
    deep = j(b"deep")
    for level in range(DEEP_LEVELS):
        deep = os.path.join(deep, b"d%03d" % level)
    os.makedirs(deep)
    _write(os.path.join(deep, b"bottom.txt"), b"the bottom\n")
    # Modes: setuid, setgid, sticky, nothing at all.
    modes = {b"setuid": 0o4755, b"setgid": 0o2750, b"no-perms": 0o000, b"odd": 0o641}
    for name, mode in modes.items():
        _write(j(name), name + b"\n")
        os.chmod(j(name), mode)
    os.makedirs(j(b"sticky"))
    os.chmod(j(b"sticky"), 0o1777)
    os.makedirs(j(b"setgid-dir"))
    os.chmod(j(b"setgid-dir"), 0o2775)
    if owners and os.geteuid() == 0:
        os.chown(j(b"odd"), 1234, 5678)
        os.chown(j(b"setgid-dir"), 4321, 8765)
        os.chown(j(b"dangling"), 2222, 3333, follow_symlinks=False)
    _write(j(b"from 2300"), b"after 2262\n")
    _write(j(b"from 1960"), b"before 1970\n")
    add_xattrs(root)
    # Nanosecond mtimes on everything, children before their folders (creating a child
    # changes its folder's mtime).
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for offset, name in enumerate(sorted(filenames + dirnames)):
            os.utime(
                os.path.join(dirpath, name),
                ns=(MTIME_NS, MTIME_NS + offset * 1_000_003),
                follow_symlinks=False,
            )
        os.utime(dirpath, ns=(MTIME_NS, MTIME_NS + 777_777_777))
    # Times a file system may refuse or clamp (then left as they are: still compared).
    for name, ns in ((b"from 2300", AFTER_2262_NS), (b"from 1960", BEFORE_1970_NS)):
        try:
            os.utime(j(name), ns=(ns, ns))
        except (OSError, OverflowError):
            pass


def add_xattrs(root: bytes) -> bool:
    """Extended attributes, a POSIX ACL and (as root) a file capability on entries of the
    nasty tree. False (and nothing set) where the file system keeps no user attributes."""
    j = lambda *parts: os.path.join(root, *parts)  # noqa: E731
    try:
        os.setxattr(j(b"empty"), b"user.test", b"1")  # setfattr -n user.test -v 1 empty
    except OSError:
        return False
    os.setxattr(j(b"sub", b"inner", b"small.bin"), b"user.big", BIG_XATTR)
    os.setxattr(j(b"sub"), b"user.folder", b"on a folder")
    os.setxattr(j(b"links-a", b"one"), b"user.hard", b"shared by three names")
    if shutil.which("setfacl"):
        subprocess.run(["setfacl", "-m", "u:nobody:r", j(b"odd")], check=True)
        subprocess.run(["setfacl", "-d", "-m", "u:nobody:rx", j(b"sub", b"inner")], check=True)
    if os.geteuid() == 0:
        try:
            os.setxattr(j(b"setgid"), b"security.capability", CAPABILITY)
        except OSError:
            pass  # a file system without capabilities
    return True


def _write(path: bytes, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def describe_tree(
    root: bytes, *, owners: bool = True, xattrs: bool = False
) -> dict[bytes, tuple[object, ...]]:
    """Everything restore must reproduce, per relative path (root itself excluded);
    with ``xattrs``, every entry's extended attributes too."""
    result: dict[bytes, tuple[object, ...]] = {}
    inode_groups: dict[int, list[bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            entry: list[object] = [kind, stat.S_IMODE(st.st_mode), st.st_mtime_ns]
            if owners:
                entry += [st.st_uid, st.st_gid]
            if stat.S_ISREG(kind):
                entry += [st.st_size, _digest(path)]
                if st.st_nlink > 1:
                    inode_groups.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(kind):
                entry.append(os.readlink(path))
            if xattrs:
                entry.append(read_all_xattrs(path))
            result[rel] = tuple(entry)
    # Hard links: which names share an inode (inode numbers themselves differ after restore).
    for names in inode_groups.values():
        group = tuple(sorted(names))
        for name in names:
            result[name] = (*result[name], ("linked", group))
    return result


def read_all_xattrs(path: bytes) -> dict[str, bytes]:
    """Every extended attribute but a file system's internal copies of the ACLs (XFS lists
    those beside the system.* ACL attributes, which are compared)."""
    from casbackup.archiver.metadata import FS_INTERNAL_XATTRS

    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {
        n: os.getxattr(path, n, follow_symlinks=False)
        for n in names
        if os.fsencode(n) not in FS_INTERNAL_XATTRS
    }


def _digest(path: bytes) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def assert_same_tree(
    expected: bytes,
    actual: bytes,
    *,
    owners: bool = True,
    root_meta: bool = True,
    xattrs: bool = False,
) -> None:
    want = describe_tree(expected, owners=owners, xattrs=xattrs)
    got = describe_tree(actual, owners=owners, xattrs=xattrs)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    assert not missing and not extra, f"missing {missing[:5]}, extra {extra[:5]}"
    diffs = [(p, want[p], got[p]) for p in sorted(want) if want[p] != got[p]]
    assert not diffs, f"{len(diffs)} entries differ, first: {diffs[:3]}"
    if not root_meta:
        return  # restoring a folder's contents into a target leaves the target's own metadata
    # The folder itself: its mode and mtime are restored too.
    a, b = os.lstat(expected), os.lstat(actual)
    assert (stat.S_IMODE(a.st_mode), a.st_mtime_ns) == (stat.S_IMODE(b.st_mode), b.st_mtime_ns)


def assert_sparse(path: bytes) -> None:
    st = os.stat(path)
    assert st.st_size == SPARSE_SIZE
    # Runs of zeros are holes, inside the chunk that holds the data too: a block or two.
    assert st.st_blocks * 512 <= 64 * 1024, f"sparse file takes {st.st_blocks * 512} bytes"
