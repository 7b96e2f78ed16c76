"""The scenarios of the differential POSIX suite: one per numbered item of issue 12 and
the rules a conformance suite checks per area. Adding one is a few lines: a seed, steps
(ops of posix_runner.Run, without the `op_` prefix) and, rarely, outcomes the merged view
may show instead of the plain directory's (`allow`, with the reason beside it)."""
from __future__ import annotations

import os
import stat

from posix_runner import (D, F, H, L, LONG_DIR, P, NAME_255, NAME_256, RENAME_EXCHANGE, RENAME_NOREPLACE,
                          RENAME_WHITEOUT, SET_NS, Scenario)

RW, WO, RO = os.O_RDWR, os.O_WRONLY, os.O_RDONLY
CREAT, EXCL, TRUNC = os.O_CREAT, os.O_EXCL, os.O_TRUNC
A, M = SET_NS

_ALL = [
    # -- the numbered items of the issue ------------------------------------------------
    Scenario("item01_deleted_files_stay_deleted", "1", seed={"d5": D(), "d5/m": F(data=b"m")}, steps=[
        ("unlink", "d5/m"), ("rmdir", "d5"), ("mkdir", "n"), ("create", "n/w"), ("rename", "n", "d5"),
        ("ls", "d5"), ("exists", "d5/m")]),
    Scenario("item02_open_unlinked_file_stays_usable", "2", seed={"f": F(data=b"static")}, steps=[
        ("open", "fd", "f", RW), ("pwrite", "fd", "written", 0), ("unlink", "f"), ("fstat", "fd"),
        ("pread", "fd", 100), ("ftruncate", "fd", 3), ("fchmod", "fd", 0o600), ("fstat", "fd"),
        ("pwrite", "fd", "more", 3), ("pread", "fd", 100), ("fsync", "fd"), ("close", "fd"), ("exists", "f"),
        ("ls", ".")]),
    Scenario("item02_new_tempfile_idiom", "2", steps=[
        ("open", "fd", "tmp", RW | CREAT | EXCL, 0o600), ("unlink", "tmp"), ("write", "fd", "scratch"),
        ("fstat", "fd"), ("pread", "fd", 10), ("fchmod", "fd", 0o644), ("fstat", "fd"), ("close", "fd"),
        ("ls", ".")]),
    Scenario("item02_open_renamed_over_file", "2", seed={"a": F(data=b"aaa"), "b": F(data=b"bbb")}, steps=[
        ("open", "fd", "b", RW), ("rename", "a", "b"), ("fstat", "fd"), ("pread", "fd", 10),
        ("ftruncate", "fd", 1), ("pread", "fd", 10), ("read", "b"), ("close", "fd")]),
    Scenario("item03_listing_while_directory_changes", "3", layers=("new", "static"),
             seed={"big": D(0o777), **{f"big/stable{i:05d}" + "s" * 50: F() for i in range(500)}},
             steps=[("list_while_changing", "big", 40)]),
    Scenario("item05_whiteout_names_are_not_whiteouts", "5",
             seed={"one.txt": F(data=b"one"), "data": D(), "data/x": F(data=b"x")}, steps=[
                 ("write_file", ".wh.one.txt", ""), ("read", "one.txt"), ("write_file", "data/.wh..wh..opq", ""),
                 ("read", "data/x"), ("mkdir", ".wh.data"), ("exists", "data/x")],
             # fuse-overlayfs and overlayfs refuse the reserved names: EINVAL is as good
             allow={0: ["EINVAL"], 2: ["EINVAL"], 4: ["EINVAL"]}),
    Scenario("item06_rename_onto_emptied_static_dir", "6", seed={"d6": D(), "d6/x": F(), "d6/y": F()}, steps=[
        ("unlink", "d6/x"), ("unlink", "d6/y"), ("mkdir", "n"), ("create", "n/new"), ("rename", "n", "d6"),
        ("ls", "d6"), ("mkdir", "e"), ("unlink", "d6/new"), ("rename", "e", "d6"), ("ls", "d6")]),
    Scenario("item08_chown_is_real", "8", seed={"f": F(), "l": L("f"), "d": D()}, steps=[
        ("chown", "f", "other", "other"), ("stat", "f"), ("lchown", "l", "other", -1), ("lstat", "l"),
        ("stat", "l"), ("chown", "d", -1, "other"), ("stat", "d"), ("open", "fd", "f", RO),
        ("fchown", "fd", "me", "me"), ("fstat", "fd"), ("close", "fd"), ("create", "new"), ("stat", "new")]),
    Scenario("item08_permissions_of_other_users", "8",
             seed={"mine": F(0o600, b"mine"), "theirs": F(0o600, b"theirs", owner="other"),
                   "shared": F(0o664, b"shared", owner="other", group="me"),
                   "closed": D(0o700, owner="other"), "closed/f": F(0o644, owner="other")},
             steps=[("read", "mine"), ("read", "theirs"), ("read", "shared"), ("append", "shared", "+"),
                    ("read", "shared"), ("append", "theirs", "+"), ("stat", "closed/f"), ("ls", "closed"),
                    ("access", "theirs", os.R_OK), ("access", "mine", os.W_OK), ("chmod", "theirs", 0o666),
                    ("chown", "mine", "other", -1), ("stat", "mine")]),
    Scenario("edit_in_a_directory_of_others", "8",
             seed={"theirs": D(0o755, owner="other"), "theirs/shared": F(0o666, b"s", owner="other"),
                   "theirs/deep": D(0o755, owner="other"), "theirs/deep/f": F(0o646, owner="other")},
             steps=[("append", "theirs/shared", "+me"), ("stat", "theirs/shared"), ("stat", "theirs"),
                    ("truncate", "theirs/deep/f", 3), ("stat", "theirs/deep"), ("stat", "theirs/deep/f"),
                    ("create", "theirs/mine"), ("unlink", "theirs/shared"), ("read", "theirs/shared")]),
    Scenario("item09_modes_as_the_kernel_passes_them", "9", steps=[
        ("umask", 0), ("mkdir", "d", 0o777), ("stat", "d"), ("create", "f", 0o666), ("stat", "f"),
        ("mkdir", "t", 0o1777), ("stat", "t"), ("umask", 0o027), ("mkdir", "e", 0o777), ("stat", "e"),
        ("create", "g", 0o666), ("stat", "g"), ("mkfifo", "p", 0o666), ("stat", "p")]),
    Scenario("item10_hard_links_share_an_inode", "10", seed={"f": F(data=b"f"), "s": L("f")}, steps=[
        ("link", "f", "g"), ("stat", "f"), ("stat", "g"), ("chmod", "g", 0o600), ("stat", "f"),
        ("append", "g", "+g"), ("read", "f"), ("link", "s", "s2"), ("lstat", "s"), ("lstat", "s2"),
        ("readlink", "s2"), ("unlink", "f"), ("stat", "g"), ("rename", "g", "h"), ("stat", "h"),
        ("link", "h", "sub"), ("stat", "sub"), ("rename", "h", "sub"), ("ls", ".")]),
    Scenario("item10_hard_link_then_write_through_either", "10", seed={"f": F(data=b"0123")}, steps=[
        ("link", "f", "g"), ("open", "fd", "f", RW), ("pwrite", "fd", "XY", 1), ("read", "g"),
        ("truncate", "g", 2), ("fstat", "fd"), ("close", "fd"), ("unlink", "g"), ("stat", "f")]),
    Scenario("item11_names_of_255_bytes", "11", seed={"s": D(), "s/x": F()}, steps=[
        ("stat", NAME_255), ("create", NAME_255), ("stat", NAME_255), ("stat", "s/" + NAME_255),
        ("rename", NAME_255, "s/" + NAME_255), ("ls", "s"), ("mkdir", NAME_255), ("rmdir", NAME_255),
        ("unlink", "s/" + NAME_255), ("symlink", NAME_255, "s/" + NAME_255), ("readlink", "s/" + NAME_255),
        ("link", "s/x", NAME_255), ("create", NAME_256), ("stat", NAME_256), ("mkdir", "s/" + NAME_256),
        ("rename", "s/x", NAME_256)]),
    Scenario("item11_paths_near_path_max", "11", steps=[
        *[("mkdir", "/".join([LONG_DIR] * k)) for k in range(1, 17)],
        ("create", "/".join([LONG_DIR] * 16) + "/" + "f" * 60),
        ("stat", "/".join([LONG_DIR] * 16) + "/" + "f" * 60),
        ("create", "/".join([LONG_DIR] * 16) + "/" + "g" * 100),       # 4116 bytes: too long
        ("unlink", "/".join([LONG_DIR] * 16) + "/" + "f" * 60)]),
    Scenario("item12_times", "12", seed={"f": F(data=b"f"), "d": D()}, steps=[
        ("utimens", "f", A, M), ("times", "f"), ("utimens", "f", "omit", A), ("times", "f"),
        ("utimens", "f", M, "omit"), ("times", "f"), ("utimens", "f", "now", "omit"), ("times", "f"),
        ("utimens", "f", "omit", "now"), ("times", "f"), ("utimens", "d", A, M), ("times", "d"),
        ("mark", "f"), ("chmod", "f", 0o640), ("moved", "f"),
        ("mark", "f"), ("chown", "f", -1, "me"), ("moved", "f"),
        ("mark", "f"), ("link", "f", "g"), ("moved", "f"),
        ("mark", "f"), ("rename", "f", "h"), ("moved", "h"),
        ("mark", "h"), ("truncate", "h", 0), ("moved", "h"),
        ("mark", "h"), ("append", "h", "x"), ("moved", "h"),
        ("mark", "d"), ("create", "d/new"), ("moved", "d"),
        ("mark", "d"), ("unlink", "d/new"), ("moved", "d"),
        ("mark", "g"), ("unlink", "h"), ("moved", "g"), ("mark", "g"), ("utimens", "g", "now", "now"), ("moved", "g"),
        ("open", "fd", "g", WO), ("mark", "g"), ("write", "fd", "x"), ("moved", "g"), ("close", "fd"),
        ("mkdir", "d/sub"), ("mark", "d/sub"), ("rename", "d/sub", "moved_dir"), ("moved", "moved_dir")]),
    Scenario("item13_special_files", "13", seed={"d": D()}, steps=[
        ("mkfifo", "fifo", 0o640), ("stat", "fifo"), ("mkfifo", "fifo"), ("mknod", "node", stat.S_IFIFO | 0o600),
        ("stat", "node"), ("mknod", "chr", stat.S_IFCHR | 0o600, 1, 3), ("lstat", "chr"),
        ("mknod", "reg", stat.S_IFREG | 0o600), ("stat", "reg"), ("bind", "sock"), ("stat", "sock"),
        ("rename", "fifo", "d/fifo"), ("ls", "d"), ("unlink", "sock"), ("unlink", "d/fifo")]),
    Scenario("item13_fifos_as_files", "13", seed={"p": P(0o640), "q": P(), "d": D()}, steps=[
        ("chmod", "p", 0o600), ("stat", "p"), ("utimens", "p", A, M), ("times", "p"), ("truncate", "p", 0),
        ("link", "p", "d/p2"), ("stat", "d/p2"), ("rename", "q", "d/q"), ("lstat", "d/q"), ("mkfifo", "d/r"),
        ("chown", "d/r", -1, "me"), ("stat", "d/r"), ("open", "fd", "d/q", RW | os.O_NONBLOCK),
        ("write", "fd", "through"), ("pread", "fd", 7), ("close", "fd"), ("unlink", "p"), ("ls", "d")]),
    Scenario("item13_rename_flags", "13", seed={"a": F(data=b"a"), "b": F(data=b"b")}, steps=[
        ("renameat2", "a", "b", RENAME_NOREPLACE), ("renameat2", "a", "b", RENAME_EXCHANGE), ("read", "a"),
        ("read", "b"), ("mkdir", "nd"), ("create", "nd/x"), ("renameat2", "a", "nd", RENAME_EXCHANGE),
        ("ls", "a"), ("read", "nd"), ("renameat2", "a", "nothing", RENAME_EXCHANGE),
        ("renameat2", "b", "c", RENAME_NOREPLACE), ("ls", "."),
        ("renameat2", "c", "e", RENAME_NOREPLACE | RENAME_EXCHANGE)]),
    Scenario("item13_rename_whiteout", "13", seed={"a": F(data=b"a")}, steps=[
        ("renameat2", "a", "b", RENAME_WHITEOUT), ("exists", "a"), ("read", "b")],
        # overlayfs refuses the flag (EINVAL): then nothing moved
        allow={0: ["EINVAL"], 1: [True], 2: ["ENOENT"]}),
    Scenario("item13_statfs", "13", steps=[("statfs", ".")]),

    # -- the areas of a conformance suite ----------------------------------------------
    Scenario("chmod_rules", "chmod", seed={"f": F(), "theirs": F(owner="other"), "d": D(), "l": L("f")}, steps=[
        ("chmod", "f", 0o4755), ("stat", "f"), ("chmod", "f", 0o2755), ("stat", "f"), ("chmod", "f", 0o1755),
        ("stat", "f"), ("chmod", "theirs", 0o600), ("stat", "theirs"), ("chmod", "d", 0o3700), ("stat", "d"),
        ("chmod", "l", 0o600), ("lstat", "l"), ("stat", "l"), ("chmod", "nothing", 0o600),
        ("chmod", "f", 0o2755), ("chown", "f", -1, "other"), ("stat", "f")]),
    Scenario("chmod_sgid_dropped_for_non_members", "chmod", seed={"f": F(group="other")}, steps=[
        ("chmod", "f", 0o2755), ("stat", "f")]),
    Scenario("chown_rules", "chown", seed={"f": F(0o6755), "d": D(0o2755), "theirs": F(owner="other")}, steps=[
        ("chown", "f", -1, -1), ("stat", "f"), ("chown", "f", "me", "me"), ("stat", "f"),
        ("chown", "theirs", "me", -1), ("chown", "f", "other", -1), ("stat", "f"), ("chown", "d", "me", "me"),
        ("stat", "d"), ("chown", "nothing", 0, 0)]),
    Scenario("link_rules", "link", seed={"f": F(), "d": D(), "d/x": F()}, steps=[
        ("link", "f", "d/x"), ("link", "nothing", "g"), ("link", "d", "dd"), ("link", "f", "nodir/g"),
        ("link", "f", "f/g"), ("link", "f", "g"), ("stat", "g"), ("link", "d/x", "x2"), ("stat", "d/x"),
        ("unlink", "g"), ("stat", "f")]),
    Scenario("mkdir_rules", "mkdir", seed={"d": D(), "f": F()}, steps=[
        ("mark", "."), ("mkdir", "new"), ("moved", "."), ("stat", "new"), ("stat", "."), ("mkdir", "d"),
        ("mkdir", "f"), ("mkdir", "f/x"), ("mkdir", "nodir/x"), ("mkdir", "d/sub", 0o700), ("stat", "d/sub"),
        ("stat", "d"), ("ls", "d")]),
    Scenario("mkfifo_mknod_rules", "mkfifo", seed={"f": F()}, steps=[
        ("mkfifo", "f"), ("mkfifo", "nodir/p"), ("mkfifo", "p", 0o4755), ("stat", "p"),
        ("open", "fd", "p", RW), ("close", "fd"), ("mknod", "b", stat.S_IFBLK | 0o600, 7, 0), ("lstat", "b")]),
    Scenario("open_rules", "open", seed={"f": F(0o644, b"content"), "d": D(), "ro": F(0o444, b"ro"),
                                         "theirs": F(0o644, b"t", owner="other")}, steps=[
        ("open", "x", "f", WO | CREAT | EXCL), ("open", "x", "new", WO | CREAT | EXCL, 0o640), ("close", "x"),
        ("stat", "new"), ("open", "x", "f", WO | TRUNC), ("close", "x"), ("stat", "f"),
        ("open", "x", "d", WO), ("open", "x", "f", RO | os.O_DIRECTORY), ("open", "x", "ro", WO),
        ("open", "x", "ro", RO | TRUNC), ("open", "x", "theirs", WO | TRUNC), ("read", "theirs"),
        ("open", "x", "nothing", RO), ("open", "x", "f/x", RO | CREAT), ("open", "x", "d", RO | os.O_DIRECTORY),
        ("close", "x"), ("open", "x", "lnk", WO | CREAT | os.O_NOFOLLOW), ("close", "x"),
        ("symlink", "f", "sl"), ("open", "x", "sl", RO | os.O_NOFOLLOW)]),
    Scenario("open_in_a_closed_directory", "open", seed={"ro": D(0o555), "closed": D(0o755, owner="other")},
             steps=[("create", "ro/f"), ("create", "closed/f"), ("mkdir", "closed/d"), ("ls", "ro")]),
    Scenario("open_truncate_static_copy", "open", seed={"f": F(0o640, b"x" * 100_000)}, steps=[
        ("open", "x", "f", WO | TRUNC), ("fstat", "x"), ("write", "x", "new"), ("close", "x"), ("read", "f"),
        ("stat", "f")]),
    Scenario("rename_rules", "rename", seed={"f": F(data=b"f"), "g": F(data=b"g")}, steps=[
        ("mkdir", "d"), ("mkdir", "e"), ("create", "e/x"), ("mkdir", "empty"),
        ("rename", "f", "d"), ("rename", "d", "f"), ("rename", "d", "e"), ("rename", "d", "empty"),
        ("ls", "."), ("rename", "empty", "empty/sub"), ("rename", "f", "g"), ("read", "g"), ("ls", "."),
        ("rename", "g", "g"), ("rename", "nothing", "x"), ("rename", "g", "nodir/x"), ("link", "g", "h"),
        ("rename", "g", "h"), ("ls", "."), ("rename", "e", "."), ("rename", "e/x", "e/../y"), ("stat", "y")]),
    Scenario("rename_static_directory", "rename", seed={"sd": D(), "sd/x": F(data=b"x")}, steps=[
        ("rename", "sd", "moved"), ("ls", ".")],
        # a directory of the static root may refuse to move (EXDEV; mv then copies), as overlayfs does
        allow={0: ["EXDEV"], 1: [["sd"]]}),
    Scenario("rename_sticky_directory", "rename",
             seed={"t": D(0o1777, owner="root"), "t/theirs": F(owner="other"), "t/mine": F(),
                   "t/rootfile": F(owner="root")},
             steps=[("rename", "t/theirs", "t/x"), ("unlink", "t/theirs"), ("rename", "t/mine", "t/y"),
                    ("rename", "t/y", "t/rootfile"), ("create", "t/z"), ("rename", "t/z", "t/theirs"),
                    ("unlink", "t/z"), ("ls", "t")]),
    Scenario("rmdir_rules", "rmdir", seed={"d": D(), "d/x": F(), "f": F(), "e": D()}, steps=[
        ("rmdir", "d"), ("rmdir", "f"), ("rmdir", "nothing"), ("rmdir", "e/."), ("rmdir", "."),
        ("stat", "."), ("mark", "."), ("rmdir", "e"), ("moved", "."), ("stat", "."), ("unlink", "d/x"),
        ("rmdir", "d"), ("ls", ".")]),
    Scenario("symlink_rules", "symlink", seed={"f": F(data=b"f")}, steps=[
        ("symlink", "f", "f"), ("symlink", "nothing", "dangling"), ("lstat", "dangling"), ("stat", "dangling"),
        ("readlink", "dangling"), ("symlink", "f", "s"), ("read", "s"), ("symlink", "x", "nodir/s"),
        ("symlink", "a/" * 100 + "b", "long"), ("readlink", "long"), ("readlink", "f")]),
    Scenario("truncate_rules", "truncate", seed={"f": F(data=b"0123456789"), "d": D(), "ro": F(0o444)}, steps=[
        ("truncate", "f", 4), ("read", "f"), ("truncate", "f", 8), ("read", "f"), ("stat", "f"),
        ("truncate", "d", 0), ("truncate", "f", -1), ("truncate", "ro", 0), ("truncate", "nothing", 0),
        ("open", "fd", "f", RO), ("ftruncate", "fd", 0), ("close", "fd"), ("open", "fd", "f", RW),
        ("ftruncate", "fd", 1 << 20), ("fstat", "fd"), ("close", "fd")]),
    Scenario("posix_fallocate_rules", "fallocate", seed={"f": F(data=b"abc"), "ro": F(0o444)}, steps=[
        ("open", "fd", "f", RW), ("fallocate", "fd", 0, 8192), ("fstat", "fd"), ("pread", "fd", 4),
        ("fallocate", "fd", 100, 10), ("fstat", "fd"), ("fallocate", "fd", -1, 10), ("close", "fd"),
        ("open", "fd", "ro", RO), ("fallocate", "fd", 0, 10), ("close", "fd")]),
    Scenario("unlink_rules", "unlink", seed={"f": F(), "d": D(), "d/x": F(), "l": L("f")}, steps=[
        ("unlink", "d"), ("unlink", "nothing"), ("unlink", "f/x"), ("unlink", "l"), ("exists", "f"),
        ("mark", "d"), ("unlink", "d/x"), ("moved", "d"), ("unlink", "f"), ("ls", ".")]),
    Scenario("sticky_directory_rules", "sticky",
             seed={"t": D(0o1777, owner="root"), "t/theirs": F(0o666, owner="other"), "t/mine": F(),
                   "t/od": D(0o777, owner="other")},
             steps=[("unlink", "t/theirs"), ("rmdir", "t/od"), ("append", "t/theirs", "x"), ("unlink", "t/mine"),
                    ("create", "t/new"), ("unlink", "t/new"), ("ls", "t")]),
    Scenario("utimensat_rules", "utimensat",
             seed={"theirs_rw": F(0o666, owner="other"), "theirs_ro": F(0o644, owner="other"), "l": L("nothing")},
             steps=[("touch_now", "theirs_rw"), ("times", "theirs_rw"), ("utimens", "theirs_rw", "now", "now"),
                    ("utimens", "theirs_rw", A, M), ("touch_now", "theirs_ro"), ("times", "theirs_ro"),
                    ("utimens", "theirs_ro", "omit", "omit"), ("utimens", "l", A, M, True), ("times", "l"),
                    ("utimens", "nothing", A, M)]),
    Scenario("setgid_directory_inheritance", "setgid", seed={"g": D(0o2777, group="other")}, steps=[
        ("create", "g/f"), ("stat", "g/f"), ("mkdir", "g/sub"), ("stat", "g/sub"), ("mkfifo", "g/p"),
        ("stat", "g/p"), ("symlink", "x", "g/l"), ("lstat", "g/l"), ("create", "g/sub/deep"),
        ("stat", "g/sub/deep")]),
    Scenario("write_clears_setuid", "chmod", seed={"s": F(0o6777, b"s", owner="other", group="other")}, steps=[
        ("append", "s", "x"), ("stat", "s")]),
    Scenario("rename_between_directories", "rename", seed={"a": D(), "a/s": F(), "c": D()}, steps=[
        ("mkdir", "a/b"), ("write_file", "a/b/f", "f"), ("mark", "a"), ("mark", "c"), ("rename", "a/b", "c/b"),
        ("moved", "a"), ("moved", "c"), ("stat", "a"), ("stat", "c"), ("stat", "c/b/.."), ("read", "c/b/f"),
        ("ls", "a"), ("ls", "c/b")]),
    Scenario("symlink_loops_and_exclusive_create", "symlink", steps=[
        ("symlink", "b", "a"), ("symlink", "a", "b"), ("read", "a"), ("open", "x", "a", WO | CREAT | EXCL),
        ("symlink", "nothing", "dangling"), ("open", "x", "dangling", WO | CREAT | EXCL),
        ("open", "x", "dangling", WO | CREAT), ("close", "x"), ("stat", "nothing"), ("lstat", "dangling")]),
    Scenario("odd_names", "names", seed={"d": D(), "d/\udcffstatic": F(data=b"s")}, steps=[
        *[step for name in ("a b", "new\nline", "\udcffbyte", "\u00fc", "-dash", "*", "'q'", "\\")
          for step in (("create", "d/" + name), ("stat", "d/" + name))],
        ("ls", "d"), ("read", "d/\udcffstatic"), ("rename", "d/\udcffstatic", "d/\udcfe"), ("ls", "d")]),
    Scenario("whiteouts_survive_moves", "1", seed={"d": D(), "d/m": F(), "s": D(), "s/gone": F(data=b"old")}, steps=[
        ("unlink", "d/m"), ("rmdir", "d"), ("mkdir", "d"), ("create", "d/w"), ("rename", "d", "e"), ("ls", "e"),
        ("mkdir", "d"), ("ls", "d"), ("unlink", "s/gone"), ("write_file", "e/gone", "new"),
        ("rename", "e/gone", "s/gone"), ("read", "s/gone"), ("ls", "s"), ("rename", "s/gone", "e/back"),
        ("ls", "s"), ("exists", "s/gone"), ("rmdir", "d"), ("ls", ".")]),
    Scenario("edits_of_a_static_file", "open", seed={"f": F(0o640, b"0123456789"), "g": F(data=b"abc")}, steps=[
        ("truncate", "f", 20), ("read", "f"), ("open", "fd", "f", WO | os.O_APPEND), ("write", "fd", "END"),
        ("pwrite", "fd", "X", 0), ("close", "fd"), ("read", "f"), ("open", "fd", "g", RW), ("pwrite", "fd", "Z", 6),
        ("pread", "fd", 10), ("mmap_write", "fd", 1, "mm"), ("close", "fd"), ("read", "g"), ("stat", "g"),
        ("stat", "f")]),
    Scenario("exchange_across_layers", "13", seed={"s": F(data=b"static"), "sd": D(), "sd/x": F(data=b"x")},
             steps=[("write_file", "n", "new"), ("renameat2", "s", "n", RENAME_EXCHANGE), ("read", "s"),
                    ("read", "n"), ("renameat2", "n", "sd/x", RENAME_EXCHANGE), ("read", "sd/x"), ("read", "n"),
                    ("ls", "sd"), ("stat", "sd/x"), ("renameat2", "sd/x", "s", RENAME_NOREPLACE),
                    ("unlink", "s"), ("renameat2", "sd/x", "s", RENAME_NOREPLACE), ("ls", "sd"), ("read", "s")]),
    Scenario("listing_of_long_names", "readdir", layers=("new", "static"),
             seed={"d": D(), **{f"d/{i:03d}" + "x" * 200: F() for i in range(100)}}, steps=[
                 *[("create", f"d/{i:03d}" + "y" * 250) for i in range(0, 100, 3)],
                 *[("unlink", f"d/{i:03d}" + "x" * 200) for i in range(0, 100, 7)],
                 ("ls", "d")]),
    # (changed or linked, the names of one static inode become separate files, and after a deletion
    # the other name keeps the static nlink: documented differences, not checked here)
    Scenario("static_hard_links", "10", layers=("new", "static"), seed={"f": F(data=b"f"), "d": D(), "d/h": H("f")},
             steps=[("stat", "f"), ("stat", "d/h"), ("read", "d/h"), ("unlink", "f"), ("exists", "f"),
                    ("read", "d/h")]),
    Scenario("removed_directory_still_open", "rmdir", seed={"e": D(), "e/x": F()}, steps=[
        ("open", "dfd", "e", RO | os.O_DIRECTORY), ("ls_fd", "dfd"), ("unlink", "e/x"), ("ls_fd", "dfd"),
        ("rmdir", "e"), ("fstat", "dfd"), ("ls_fd", "dfd"), ("close", "dfd"), ("exists", "e")]),
    Scenario("identity_across_copy_up", "10", seed={"f": F(data=b"old"), "d": D(), "d/x": F()}, steps=[
        ("stat", "f"), ("stat", "d"), ("append", "f", "+"), ("stat", "f"), ("create", "d/y"), ("stat", "d"),
        ("stat", "d/x"), ("chmod", "d/x", 0o600), ("stat", "d/x")]),
    Scenario("times_kept_by_copy_up", "12", seed={"f": F(data=b"f"), "d": D(), "d/x": F()}, steps=[
        ("chmod", "f", 0o600), ("times", "f"), ("chown", "d/x", -1, "me"), ("times", "d/x"), ("times", "d")]),
    Scenario("unlink_while_listing", "readdir", layers=("new", "static"),      # names of 60 bytes: 4 batches
             seed={"d": D(), **{f"d/s{i:03d}" + "s" * 56: F() for i in range(100)}}, steps=[
                 *[("create", f"d/n{i:03d}" + "n" * 56) for i in range(0, 100, 2)], ("unlink_while_listing", "d"),
                 ("ls", "d")]),
    Scenario("sqlite_databases", "tools", seed={"static.db": F(0o664)}, steps=[
        ("sqlite", "new.db", "DELETE"), ("sqlite", "wal.db", "WAL"), ("sqlite", "static.db", "TRUNCATE"),
        ("sqlite", "new.db", "DELETE"), ("ls", ".")]),
    Scenario("tar_rsync_git", "tools", layers=("new", "static"), seed={"src": D(), "src/a": F(0o640, b"a"), "src/l": L("a")}, steps=[
        ("link", "src/a", "src/h"), ("mkfifo", "src/p"),
        ("sh", "tar -cf t.tar src && mkdir out && tar -xpf t.tar -C out && cd out/src && "
               "stat -c '%n %F %a %h' * | sort && cat h"),
        ("sh", "rsync -aH src/ copy/ && stat -c '%n %F %a %h' copy/* | sort && rsync -aHn --itemize-changes src/ copy/"),
        ("sh", "git init -q repo && cd repo && echo x > f && mkdir d && echo y > d/g && git add -A && "
               "git -c user.name=t -c user.email=t@t commit -qm first && git mv f d/f && "
               "git -c user.name=t -c user.email=t@t commit -qm second && git fsck --strict && "
               "git log --format=%s && git status --porcelain && ls d"),
        ("sh", "cp -a src cpa && stat -c '%n %F %a %h' cpa/* | sort && du -s --apparent-size src cpa | cut -f1")]),
    Scenario("listing_and_contents", "readdir",
             seed={"d": D(), "d/a": F(data=b"a"), "d/b": F(data=b"b"), "d/sub": D(), "d/l": L("a")},
             steps=[("ls", "d"), ("write_file", "d/c", "c"), ("unlink", "d/a"), ("ls", "d"), ("read", "d/l"),
                    ("create", "d/a"), ("read", "d/a"), ("ls", "d"), ("stat", "d/sub")]),

    # -- listings without attributes (lean: copick/overlay and FSDB list files without
    # their attributes until a walk stats them; the first LOOKUP of a folder sizes the rest)
    Scenario("lean_listing_then_stat_each", "readdir",
             seed={"d": D(), "d/a": F(0o640, b"a" * 10), "d/b": F(0o600, b"b" * 3000), "d/l": L("a"), "d/p": P(0o600), "d/sub": D(0o700), "d/sub/x": F(data=b"x"),
                   **{f"d/f{i:02d}": F(0o644, b"f" * i) for i in range(30)}},
             steps=[("times", "d/l"), ("ls_stat", "d"), ("append", "d/f07", "more"), ("truncate", "d/b", 5), ("chmod", "d/f08", 0o600),
                    ("ls_stat", "d"), ("link", "d/f09", "d/f09.link"), ("ls_stat", "d"), ("unlink", "d/f09"),
                    ("ls_stat", "d"), ("ls_stat", "d/sub")]),
    Scenario("lean_open_unlinked_and_linked", "readdir",
             seed={"d": D(), **{f"d/f{i:02d}": F(0o644, b"f" * i) for i in range(20)}},
             steps=[("open", "fd", "d/f05", RW), ("ls_stat", "d"), ("unlink", "d/f05"), ("ls_stat", "d"),
                    ("fstat", "fd"), ("pwrite", "fd", "written", 0), ("fstat", "fd"), ("link", "d/f06", "d/f05"),
                    ("ls_stat", "d"), ("open", "fd2", "d/f06", RW), ("unlink", "d/f06"), ("ftruncate", "fd2", 2),
                    ("ls_stat", "d"), ("fstat", "fd2"), ("close", "fd"), ("close", "fd2"), ("ls_stat", "d")]),
    Scenario("lean_links_changed_after_sizing", "10",
             seed={"d": D(), **{f"d/f{i:02d}": F(0o644, b"f" * i) for i in range(20)}},
             steps=[("link", "d/f05", "d/zz"), ("ls", "d"), ("stat", "d/f00"), ("unlink", "d/f05"), ("stat", "d/zz"),
                    ("ls", "d"), ("stat", "d/f01"), ("link", "d/zz", "d/f05"), ("chmod", "d/f05", 0o600),
                    ("stat", "d/zz"), ("ls_stat", "d")]),
    Scenario("lean_listing_while_renaming", "readdir", layers=("new", "static"),
             seed={"big": D(0o777), **{f"big/stable{i:04d}": F(data=b"s" * (i % 13)) for i in range(120)}},
             steps=[("list_stat_while_renaming", "big", 10), ("ls_stat", "big")]),
    Scenario("lean_missing_then_made", "readdir",
             seed={"d": D(), **{f"d/f{i:02d}": F(data=b"f" * i) for i in range(10)}},
             steps=[("ls", "d"), ("exists", "d/new"), ("stat", "d/new"), ("write_file", "d/new", "new"),
                    ("stat", "d/new"), ("exists", "d/moved"), ("rename", "d/f01", "d/moved"), ("stat", "d/moved"),
                    ("stat", "d/f01"), ("exists", "d/linked"), ("link", "d/f02", "d/linked"), ("stat", "d/linked"),
                    ("exists", "d/sub"), ("mkdir", "d/sub"), ("stat", "d/sub"), ("exists", "d/sl"),
                    ("symlink", "f03", "d/sl"), ("lstat", "d/sl"), ("read", "d/sl"), ("ls_stat", "d")]),
    Scenario("rm_r_and_mv_of_trees", "tools",
             seed={"t": D(), "t/a": D(), "t/a/b": D(0o750), "t/a/b/c": F(data=b"c" * 99), "t/a/l": L("b/c"),
                   **{f"t/a/f{i:02d}": F(0o640, b"f" * i) for i in range(40)},
                   "t/e": D(), "u": D(), "u/x": F(data=b"x")},
             steps=[("link", "t/a/b/c", "t/a/h"), ("sh", "find t -printf '%P %y %m %n\\n' | sort && find t -type f -printf '%P %s\\n' | sort"),
                    ("sh", "mv t/a t/moved && mv t w && find w -printf '%P %y %m %n\\n' | sort && "
                           "find w -type f -printf '%P %s\\n' | sort && cat w/moved/l"),
                    ("sh", "rm -r w/moved && ls -A w && rm -r w u && ls -A"), ("exists", "t"), ("exists", "w")]),
    Scenario("folder_made_again_while_inside", "rmdir", seed={"d": D(), "d/f": F(data=b"f"), "d/s": D()},
             steps=[("cd", "d"), ("read", "f"), ("ls", "."), ("at_top", "unlink", "d/f"), ("at_top", "rmdir", "d/s"),
                    ("at_top", "rmdir", "d"), ("at_top", "mkdir", "d"), ("at_top", "write_file", "d/f", "new"),
                    ("at_top", "mkdir", "d/s"), ("stat", "f"), ("exists", "f"), ("ls", "."), ("read", "f"),
                    ("create", "g"), ("mkdir", "n"), ("stat", "s"), ("rename", "f", "h"), ("link", "f", "h"),
                    ("symlink", "x", "y"), ("at_top", "ls_stat", "d"), ("at_top", "read", "d/f")]),
]

SCENARIOS = {s.name: s for s in _ALL}
assert len(SCENARIOS) == len(_ALL), "scenario names must be unique"
