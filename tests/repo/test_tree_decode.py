"""The version 2 tree decoder's fast path (``_decode_v2``) against the general one
(``_decode``, through ``_stored_nodes``): the same nodes for every valid tree, and the
same error, with the same message, for every damaged one."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casbackup.errors import FormatError
from casbackup.repo import tree as tree_module
from casbackup.repo.tree import Node, NodeKind, decode_tree, encode_tree

from .strategies import node_lists
from .test_formats import _tree_v1


def _outcome(decode, data: bytes) -> tuple[str, object]:  # type: ignore[no-untyped-def]
    """What a decoder makes of ``data``: ("ok", nodes) or ("error", message), where the
    truncation errors are mapped to decode_tree's message."""
    try:
        return "ok", decode(data)
    except FormatError as exc:
        return "error", str(exc)
    except (struct.error, IndexError):
        return "error", "tree is truncated"


def _same(data: bytes) -> None:
    fast = _outcome(tree_module._decode_v2, data)
    general = _outcome(tree_module._decode, data)
    assert fast == general
    if fast[0] == "ok":  # the same fields and the same types (bytes, not memoryview; None)
        for a, b in zip(fast[1], general[1], strict=True):  # type: ignore[call-overload]
            assert vars(a) == vars(b)
            assert {k: type(v) for k, v in vars(a).items()} == {
                k: type(v) for k, v in vars(b).items()
            }


@given(node_lists(max_size=10))
@settings(max_examples=300, deadline=None)
def test_fast_path_decodes_every_kind_as_the_general_path(tree: list[Node]) -> None:
    data = encode_tree(tree)
    _same(data)
    assert decode_tree(data) == tree


def test_every_kind_and_field_shape_is_covered() -> None:
    """Hypothesis draws these too; here each shape is certain to be met: one node of every
    kind, files with 0, 1 and 3 chunks, xattrs, long owners, a symlink target."""
    chunk = bytes(range(32))
    every = [
        Node(b"a-dir", NodeKind.DIR, subtree=bytes(32), user="root", group="root"),
        Node(b"b-empty", NodeKind.FILE, content_hash=bytes(32), user="u" * 255),
        Node(b"c-one", NodeKind.FILE, size=5, content=(chunk,), content_hash=bytes(32)),
        Node(b"d-three", NodeKind.FILE, content=(chunk, chunk[::-1], chunk), nlink=2),
        Node(b"e-link", NodeKind.SYMLINK, link_target=b"../x" * 50),
        Node(b"f-fifo", NodeKind.FIFO, xattrs=((b"user.a", b"1"), (b"user.b", b""))),
        Node(b"g-chr", NodeKind.CHARDEV, rdev=2**64 - 1, mtime_ns=-1, ctime_ns=2**62 * 10**9),
        Node(b"h-blk", NodeKind.BLOCKDEV, group="gr\udcffoup"),
        Node(b"i-sock", NodeKind.SOCKET, mode=0o7777),
    ]
    data = encode_tree(every)
    _same(data)
    assert decode_tree(data) == every
    assert decode_tree(data)[2].content == (chunk,)


@given(node_lists(max_size=4), st.data())
@settings(max_examples=200, deadline=None)
def test_damaged_trees_fail_alike(tree: list[Node], data: st.DataObject) -> None:
    encoded = bytearray(encode_tree(tree))
    # a byte changed anywhere after the version, a cut, or bytes added at the end
    how = data.draw(st.sampled_from(["flip", "cut", "grow"]))
    if how == "flip" and len(encoded) > 1:
        at = data.draw(st.integers(1, len(encoded) - 1))
        encoded[at] = data.draw(st.integers(0, 255))
    elif how == "cut":
        del encoded[data.draw(st.integers(1, len(encoded))) :]
    else:
        encoded += data.draw(st.binary(min_size=1, max_size=8))
    _same(bytes(encoded))


def test_every_truncation_of_a_tree_fails_alike() -> None:
    tree = [
        Node(b"a", NodeKind.DIR, subtree=bytes(32)),
        Node(b"b", NodeKind.FILE, content=(bytes(32), bytes(32)), content_hash=bytes(32)),
        Node(b"c", NodeKind.FIFO, xattrs=((b"k", b"v"),)),
    ]
    data = encode_tree(tree)
    for end in range(1, len(data)):
        _same(data[:end])
        with pytest.raises(FormatError):
            decode_tree(data[:end])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("name", b"..", "invalid name"),
        ("name", b"a/b", "invalid name"),
        ("name", b"a\0b", "invalid name"),
        ("subtree", None, "has no subtree"),
        ("content_hash", b"short", "wrong size"),
        ("mode", 0o10000, "outside the permission bits"),
        ("kind", 8, "unknown node kind"),
    ],
)
def test_fast_path_refuses_what_the_general_path_refuses(
    field: str, value: object, message: str
) -> None:
    node = Node(b"x", NodeKind.DIR, subtree=bytes(32))
    values = dict(vars(node))
    values[field] = value
    bad = object.__new__(Node)
    bad.__dict__.update(values)
    data = encode_tree([bad])
    _same(data)
    with pytest.raises(FormatError, match=message):
        decode_tree(data)


def test_unsorted_and_duplicate_names_fail_alike() -> None:
    a, b = Node(b"a", NodeKind.FIFO), Node(b"b", NodeKind.FIFO)
    for tree in ([b, a], [a, a]):
        data = encode_tree(tree)
        _same(data)
        with pytest.raises(FormatError, match="strictly sorted"):
            decode_tree(data)


@given(node_lists(max_size=4))
@settings(deadline=None)
def test_version_1_trees_take_the_general_path(tree: list[Node]) -> None:
    """decode_tree gives the fast path version 2 trees only (a version 1 fixed part is 8
    bytes shorter, its times nanosecond counts)."""
    tree = [replace(n, mtime_ns=n.mtime_ns % 2**62, ctime_ns=-(n.ctime_ns % 2**62)) for n in tree]
    old = _tree_v1(tree)

    def refuse(data: bytes) -> list[Node]:
        raise AssertionError("a version 1 tree reached the version 2 decoder")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tree_module, "_decode_v2", refuse)
        assert decode_tree(old) == tree
